//! Running the real kubectl against a test server, each runner with its own HOME (kubectl
//! caches discovery there).

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

/// A kubectl client for one kubeconfig.
pub struct Kubectl {
    bin: PathBuf,
    kubeconfig: PathBuf,
    home: tempfile::TempDir,
}

/// The versioned kubectl binaries (`/usr/lib/google-cloud-sdk/bin/kubectl.1.NN`).
pub fn kubectl_version_binary(minor: u32) -> Option<PathBuf> {
    let p = PathBuf::from(format!("/usr/lib/google-cloud-sdk/bin/kubectl.1.{minor}"));
    p.exists().then_some(p)
}

impl Kubectl {
    /// The system kubectl (the wrapper that matches the server's version), or None if it
    /// is not installed.
    pub fn new(kubeconfig: &Path) -> Option<Self> {
        let bin = ["/usr/bin/kubectl", "/usr/local/bin/kubectl"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.exists())?;
        Some(Self::with_binary(bin, kubeconfig))
    }

    /// A specific kubectl binary.
    pub fn with_binary(bin: PathBuf, kubeconfig: &Path) -> Self {
        Kubectl {
            bin,
            kubeconfig: kubeconfig.to_path_buf(),
            home: tempfile::tempdir().expect("temp HOME"),
        }
    }

    /// Runs kubectl with `args` and optional stdin.
    pub fn run(&self, args: &[&str], stdin: Option<&str>) -> Output {
        use std::io::Write;
        let mut child = Command::new(&self.bin)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.home.path())
            .env_remove("KUBECTL_EXTERNAL_DIFF")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl");
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .expect("stdin")
                .write_all(input.as_bytes())
                .expect("writing kubectl stdin");
        }
        child.wait_with_output().expect("waiting for kubectl")
    }

    /// Runs kubectl, panics unless it succeeds; returns stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, None)
    }

    /// Runs kubectl with `stdin`, asserts it succeeded, and returns its output.
    pub fn ok_with(&self, args: &[&str], stdin: Option<&str>) -> String {
        let out = self.run(args, stdin);
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "kubectl {} failed ({}):\nstdout: {stdout}\nstderr: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        stdout
    }

    /// Runs kubectl, panics if it succeeds; returns stderr.
    pub fn fails(&self, args: &[&str]) -> String {
        let out = self.run(args, None);
        assert!(
            !out.status.success(),
            "kubectl {} should have failed; stdout: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    /// Starts kubectl in the background (for `get -w`); stdout is piped.
    pub fn spawn(&self, args: &[&str]) -> std::process::Child {
        Command::new(&self.bin)
            .args(args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("HOME", self.home.path())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("running kubectl")
    }
}
