//! TLS for the tests: certificates generated in-process and a redis-server that listens for
//! TLS with them.

use std::path::{Path, PathBuf};

use super::RedisServer;

impl RedisServer {
    /// Starts a server that also listens for TLS on 127.0.0.1 with `certs`' server
    /// certificate (and, with `client_auth`, requires client certificates signed by its CA).
    /// The unix socket stays plain, for the test's own inspection.
    pub fn start_tls(certs: &TlsCerts, client_auth: bool) -> RedisServer {
        RedisServer::start_on_port("rqs-redis-tls-", |port| {
            [
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--tls-cert-file",
                &certs.server_cert.display().to_string(),
                "--tls-key-file",
                &certs.server_key.display().to_string(),
                "--tls-ca-cert-file",
                &certs.ca.display().to_string(),
                "--tls-auth-clients",
                if client_auth { "yes" } else { "no" },
                "--loglevel",
                "verbose",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        })
    }

    /// `rediss://127.0.0.1:PORT/0` for a server from [`RedisServer::start_tls`].
    pub fn tls_url(&self) -> String {
        format!("rediss://127.0.0.1:{}/0", self.port.expect("a TLS server"))
    }
}

/// Certificates for TLS tests, generated in-process: a CA, a server certificate it signed
/// for `127.0.0.1` and `localhost`, a client certificate it signed, and an unrelated CA
/// (for "wrong CA" tests). PEM files in `dir`; the keys are mode 600.
pub struct TlsCerts {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    pub other_ca: PathBuf,
}

impl TlsCerts {
    pub fn generate(dir: &Path) -> TlsCerts {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair,
            KeyUsagePurpose,
        };
        use std::os::unix::fs::PermissionsExt;
        let ca_params = |cn: &str| {
            let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
            p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
            p.distinguished_name.push(DnType::CommonName, cn);
            p
        };
        let ca =
            CertifiedIssuer::self_signed(ca_params("rqs test CA"), KeyPair::generate().unwrap())
                .unwrap();
        let other =
            CertifiedIssuer::self_signed(ca_params("rqs other CA"), KeyPair::generate().unwrap())
                .unwrap();
        let leaf = |names: Vec<String>, cn: &str| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(names).unwrap();
            p.distinguished_name.push(DnType::CommonName, cn);
            let cert = p.signed_by(&key, &ca).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        let (server_pem, server_key) =
            leaf(vec!["127.0.0.1".into(), "localhost".into()], "redis server");
        let (client_pem, client_key) = leaf(vec!["rq-worker".into()], "rq-worker");
        let write = |name: &str, text: &str, mode: u32| {
            let p = dir.join(name);
            std::fs::write(&p, text).expect("write pem");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).expect("chmod");
            p
        };
        TlsCerts {
            ca: write("ca.pem", &ca.pem(), 0o644),
            server_cert: write("server.pem", &server_pem, 0o644),
            server_key: write("server.key", &server_key, 0o600),
            client_cert: write("client.pem", &client_pem, 0o644),
            client_key: write("client.key", &client_key, 0o600),
            other_ca: write("other-ca.pem", &other.pem(), 0o644),
        }
    }
}
