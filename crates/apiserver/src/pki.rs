//! The cluster's certificates: a CA created on first start, the apiserver's serving
//! certificate, the admin client certificate, and the kubeconfig that carries them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};

/// Errors creating or loading certificates.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// A file does not hold a usable certificate or key.
    #[error("{path}: {message} (remove the file to have it recreated)")]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// A certificate could not be made.
    #[error("creating a certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

const CA_DAYS: i64 = 3650;
const LEAF_DAYS: i64 = 365;
/// Leaf certificates are renewed at start when they expire within this time.
const RENEW_BEFORE: Duration = Duration::from_secs(90 * 86400);

/// A PEM certificate and its PEM private key.
#[derive(Clone, Debug)]
pub struct CertPair {
    /// The certificate.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
}

/// The cluster CA and the certificates issued from it, kept in `DATA_DIR/server/tls`.
pub struct Pki {
    dir: PathBuf,
    /// The cluster CA.
    pub ca: CertPair,
    /// The apiserver's serving certificate.
    pub serving: CertPair,
    /// The admin client certificate (`system:masters`) of the written kubeconfig.
    pub admin: CertPair,
    /// The apiserver's client certificate for kubelets (logs, exec, attach, port-forward).
    pub kubelet_client: CertPair,
}

fn read(path: &Path) -> Result<Option<String>, PkiError> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            path: path.into(),
            source,
        }),
    }
}

/// Writes a file atomically with mode 0600.
pub fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| PkiError::Io {
        path: path.into(),
        source,
    };
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io)?;
    }
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

fn validity(params: &mut CertificateParams, days: i64) {
    let now = jiff::Timestamp::now();
    let to_offset =
        |t: jiff::Timestamp| rcgen::date_time_ymd(1970, 1, 1) + time_delta(t.as_second());
    params.not_before = to_offset(now - jiff::SignedDuration::from_secs(3600));
    params.not_after = to_offset(now + jiff::SignedDuration::from_secs(days * 86400));
}

fn time_delta(secs: i64) -> std::time::Duration {
    std::time::Duration::from_secs(secs.max(0) as u64)
}

fn dn(cn: &str, orgs: &[&str]) -> DistinguishedName {
    let mut d = DistinguishedName::new();
    for o in orgs {
        d.push(DnType::OrganizationName, *o);
    }
    d.push(DnType::CommonName, cn);
    d
}

/// Seconds until a PEM certificate expires, or None if it does not parse.
fn expires_in(cert_pem: &str) -> Option<i64> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let not_after = cert.validity().not_after.timestamp();
    Some(not_after - jiff::Timestamp::now().as_second())
}

impl Pki {
    /// Loads the PKI under `dir`, creating what is missing; the serving certificate is
    /// reissued when its names differ from `sans` or it is about to expire.
    pub fn load_or_create(dir: &Path, sans: &[String]) -> Result<Self, PkiError> {
        let ca_crt = dir.join("server-ca.crt");
        let ca_key = dir.join("server-ca.key");
        let ca = match (read(&ca_crt)?, read(&ca_key)?) {
            (Some(cert_pem), Some(key_pem)) => CertPair { cert_pem, key_pem },
            (None, None) => {
                let key = KeyPair::generate()?;
                let mut params = CertificateParams::new(Vec::<String>::new())?;
                params.distinguished_name = dn(
                    &format!("rkube-server-ca@{}", jiff::Timestamp::now().as_second()),
                    &[],
                );
                params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
                params.key_usages = vec![
                    KeyUsagePurpose::KeyCertSign,
                    KeyUsagePurpose::CrlSign,
                    KeyUsagePurpose::DigitalSignature,
                ];
                validity(&mut params, CA_DAYS);
                let cert = params.self_signed(&key)?;
                let pair = CertPair {
                    cert_pem: cert.pem(),
                    key_pem: key.serialize_pem(),
                };
                write_private(&ca_key, &pair.key_pem)?;
                write_private(&ca_crt, &pair.cert_pem)?;
                pair
            }
            _ => {
                return Err(PkiError::Invalid {
                    path: dir.into(),
                    message: "only one of server-ca.crt and server-ca.key exists".into(),
                })
            }
        };
        let mut pki = Pki {
            dir: dir.into(),
            serving: ca.clone(),
            admin: ca.clone(),
            kubelet_client: ca.clone(),
            ca,
        };
        let sans_file = dir.join("serving-kube-apiserver.sans");
        let wanted = sans.join("\n");
        pki.serving = pki.leaf(
            "serving-kube-apiserver",
            read(&sans_file)?.as_deref() == Some(&wanted),
            |p| {
                p.distinguished_name = dn("kube-apiserver", &[]);
                p.subject_alt_names = sans
                    .iter()
                    .map(|s| match s.parse::<IpAddr>() {
                        Ok(ip) => rcgen::SanType::IpAddress(ip),
                        Err(_) => rcgen::SanType::DnsName(
                            s.clone()
                                .try_into()
                                .unwrap_or_else(|_| "localhost".try_into().expect("dns name")),
                        ),
                    })
                    .collect();
                p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
            },
        )?;
        write_private(&sans_file, &wanted)?;
        pki.admin = pki.leaf("client-admin", true, |p| {
            p.distinguished_name = dn("system:admin", &["system:masters"]);
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        })?;
        pki.kubelet_client = pki.leaf("client-kube-apiserver-kubelet", true, |p| {
            p.distinguished_name = dn("kube-apiserver-kubelet-client", &["system:masters"]);
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        })?;
        Ok(pki)
    }

    fn issuer(&self) -> Result<Issuer<'static, KeyPair>, PkiError> {
        let invalid = |message: String| PkiError::Invalid {
            path: self.dir.join("server-ca.key"),
            message,
        };
        let key = KeyPair::from_pem(&self.ca.key_pem).map_err(|e| invalid(e.to_string()))?;
        Issuer::from_ca_cert_pem(&self.ca.cert_pem, key).map_err(|e| invalid(e.to_string()))
    }

    /// Loads `name.crt`/`name.key`, or issues them when missing, expiring, or not `keep`.
    fn leaf(
        &self,
        name: &str,
        keep: bool,
        configure: impl Fn(&mut CertificateParams),
    ) -> Result<CertPair, PkiError> {
        let crt = self.dir.join(format!("{name}.crt"));
        let key = self.dir.join(format!("{name}.key"));
        if let (Some(cert_pem), Some(key_pem)) = (read(&crt)?, read(&key)?) {
            let fresh = expires_in(&cert_pem).is_some_and(|s| s > RENEW_BEFORE.as_secs() as i64);
            if keep && fresh {
                return Ok(CertPair { cert_pem, key_pem });
            }
        }
        let pair = self.issue(&configure)?;
        write_private(&key, &pair.key_pem)?;
        write_private(&crt, &pair.cert_pem)?;
        Ok(pair)
    }

    fn issue(&self, configure: &dyn Fn(&mut CertificateParams)) -> Result<CertPair, PkiError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        validity(&mut params, LEAF_DAYS);
        configure(&mut params);
        let cert = params.signed_by(&key, &self.issuer()?)?;
        Ok(CertPair {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }

    /// Issues a client certificate for `cn` in groups `orgs` (node credentials and the like).
    pub fn issue_client(&self, cn: &str, orgs: &[&str]) -> Result<CertPair, PkiError> {
        self.issue(&|p| {
            p.distinguished_name = dn(cn, orgs);
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        })
    }

    /// Issues a serving certificate for `cn` valid for `sans` (IP addresses or DNS names):
    /// a kubelet's HTTPS server.
    pub fn issue_serving(&self, cn: &str, sans: &[String]) -> Result<CertPair, PkiError> {
        self.issue(&|p| {
            p.distinguished_name = dn(cn, &[]);
            p.subject_alt_names = sans
                .iter()
                .filter_map(|s| match s.parse::<IpAddr>() {
                    Ok(ip) => Some(rcgen::SanType::IpAddress(ip)),
                    Err(_) => s.clone().try_into().ok().map(rcgen::SanType::DnsName),
                })
                .collect();
            p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        })
    }

    /// A kubeconfig for `server` with the admin credentials.
    pub fn admin_kubeconfig(&self, server: &str) -> String {
        kubeconfig(server, &self.ca.cert_pem, &self.admin)
    }
}

/// A kubeconfig with one cluster, user and context, all named `default`.
pub fn kubeconfig(server: &str, ca_pem: &str, client: &CertPair) -> String {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: default\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\ncontexts:\n- name: default\n  context:\n    cluster: default\n    user: default\ncurrent-context: default\nusers:\n- name: default\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b64(ca_pem),
        b64(&client.cert_pem),
        b64(&client.key_pem)
    )
}

/// The names the serving certificate is valid for: localhost, loopback, the host name
/// and addresses, the in-cluster `kubernetes` Service names and IP, and extra SANs.
pub fn default_sans(service_ip: Option<IpAddr>, extra: &[String]) -> Vec<String> {
    let mut sans = vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
        "kubernetes".to_string(),
        "kubernetes.default".to_string(),
        "kubernetes.default.svc".to_string(),
        "kubernetes.default.svc.cluster.local".to_string(),
    ];
    if let Some(h) = hostname() {
        sans.push(h);
    }
    sans.extend(host_addresses().into_iter().map(|a| a.to_string()));
    if let Some(ip) = service_ip {
        sans.push(ip.to_string());
    }
    sans.extend(extra.iter().cloned());
    let mut seen = std::collections::HashSet::new();
    sans.retain(|s| seen.insert(s.clone()));
    sans
}

fn hostname() -> Option<String> {
    let mut buf = [0u8; 256];
    // SAFETY: buf is valid for its length; gethostname NUL-terminates on success.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return None;
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    let h = String::from_utf8_lossy(&buf[..end]).to_lowercase();
    (!h.is_empty()).then_some(h)
}

/// The IPv4/IPv6 addresses of this host's interfaces.
pub fn host_addresses() -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a linked list we free with freeifaddrs below.
    if unsafe { libc::getifaddrs(&mut ifap) } != 0 {
        return out;
    }
    let mut cur = ifap;
    while !cur.is_null() {
        // SAFETY: cur points into the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        if !ifa.ifa_addr.is_null() {
            // SAFETY: the family tells which sockaddr type ifa_addr points to.
            unsafe {
                match (*ifa.ifa_addr).sa_family as i32 {
                    libc::AF_INET => {
                        let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        out.push(IpAddr::from(u32::from_be(sa.sin_addr.s_addr).to_be_bytes()));
                    }
                    libc::AF_INET6 => {
                        let sa = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        out.push(IpAddr::from(sa.sin6_addr.s6_addr));
                    }
                    _ => {}
                }
            }
        }
        cur = ifa.ifa_next;
    }
    // SAFETY: ifap came from getifaddrs.
    unsafe { libc::freeifaddrs(ifap) };
    out
}
