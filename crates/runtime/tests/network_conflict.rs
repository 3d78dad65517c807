//! A pod subnet routed through another interface (a bridge left by another cluster or an
//! earlier run) makes the network not ready, with a message that says what to do,
//! instead of pods that start but cannot be reached from the node. Root only.

use std::process::Command;

use rkube_runtime::cni::Network;

fn ip(args: &[&str]) -> bool {
    Command::new("ip")
        .args(args)
        .status()
        .is_ok_and(|s| s.success())
}

#[test]
fn a_subnet_routed_elsewhere_is_not_ready() {
    if !rkube_testkit::is_root() {
        eprintln!(
            "SKIPPED a_subnet_routed_elsewhere_is_not_ready: needs root (creates an interface)"
        );
        return;
    }
    let tag = std::process::id() % 200;
    let leftover = format!("rkleft{tag}");
    let cidr = format!("10.253.{tag}.0/24");
    let state = tempfile::tempdir().unwrap();
    let net = Network::default_bridge(&format!("rkown{tag}"), &cidr, state.path());
    assert!(net.ready().is_ok(), "{:?}", net.ready());
    let _ = ip(&["link", "delete", &leftover]);
    assert!(ip(&["link", "add", &leftover, "type", "bridge"]));
    let gw = format!("10.253.{tag}.1/24");
    let ok = ip(&["addr", "add", &gw, "dev", &leftover]) && ip(&["link", "set", &leftover, "up"]);
    let ready = net.ready();
    ip(&["link", "delete", &leftover]);
    assert!(ok, "setting up the leftover interface failed");
    let e = ready.expect_err("a subnet routed through another interface was reported ready");
    let msg = e.to_string();
    assert!(
        msg.contains(&leftover) && msg.contains("ip link delete"),
        "{msg}"
    );
    assert!(net.ready().is_ok(), "{:?}", net.ready());
}
