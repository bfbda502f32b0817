//! The kubelet's authenticated port (`GET https://<node>:10250/pods`): a client certificate
//! (on a node, the kubelet's own `kubelet-client-current.pem`) and/or a bearer token (a service
//! account token), the server verified against a CA bundle.
//!
//! The client is built when first needed and rebuilt when a credential file changes (the
//! kubelet rotates its client certificate; a projected token is re-read on every request). No
//! credential on this machine means the source is not used (a host without a kubelet); a file
//! that cannot be read or parsed, or a kubelet that refuses us, is logged once per distinct error
//! (naming the file or the URL) and the other sources carry on.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{anyhow, bail, Context, Result};

use super::metadata::{parse_kubelet_pods, Meta};
use super::ContainersConfig;

/// The authenticated kubelet source.
pub struct KubeletAuth {
    url: String,
    cert: PathBuf,
    key: PathBuf,
    token: PathBuf,
    ca: PathBuf,
    insecure: bool,
    timeout: Duration,
    /// The client and the modification times of the files it was built from.
    client: Option<(Vec<Option<SystemTime>>, reqwest::blocking::Client)>,
    /// The last error logged (each distinct one is logged once), or "unused" once that was said.
    last_logged: Option<String>,
}

/// What one attempt gave.
pub enum Answer {
    /// No credential configured or present here: the source is not used.
    Unused(String),
    Pods(HashMap<String, Meta>),
}

impl KubeletAuth {
    /// None when `kubelet_url` is empty.
    pub fn new(cfg: &ContainersConfig, timeout: Duration) -> Option<KubeletAuth> {
        if cfg.kubelet_url.is_empty() {
            return None;
        }
        Some(KubeletAuth {
            url: cfg.kubelet_url.clone(),
            cert: cfg.kubelet_client_cert.clone(),
            key: cfg.kubelet_client_key.clone(),
            token: cfg.kubelet_token_file.clone(),
            ca: cfg.kubelet_ca_file.clone(),
            insecure: cfg.kubelet_insecure_skip_verify,
            timeout,
            client: None,
            last_logged: None,
        })
    }

    /// The pod list, or None when the source is unused here or failed (logged).
    pub fn fetch(&mut self) -> Option<HashMap<String, Meta>> {
        match self.try_fetch() {
            Ok(Answer::Pods(pods)) => {
                if self
                    .last_logged
                    .take()
                    .is_some_and(|l| !l.starts_with("unused"))
                {
                    tracing::info!(url = %self.url, "kubelet pod list answers again");
                }
                Some(pods)
            }
            Ok(Answer::Unused(why)) => {
                let msg = format!("unused: {why}");
                if self.last_logged.as_deref() != Some(msg.as_str()) {
                    tracing::info!(url = %self.url, reason = %why, "kubelet authenticated port not used");
                    self.last_logged = Some(msg);
                }
                None
            }
            Err(e) => {
                let msg = format!("{e:#}");
                if self.last_logged.as_deref() != Some(msg.as_str()) {
                    tracing::warn!(url = %self.url, error = %msg, "kubelet pod list (authenticated port) failed; other metadata sources still used");
                    self.last_logged = Some(msg);
                }
                None
            }
        }
    }

    pub fn try_fetch(&mut self) -> Result<Answer> {
        let have_cert = !self.cert.as_os_str().is_empty() && self.cert.exists();
        let have_token = !self.token.as_os_str().is_empty();
        if !have_cert && !have_token {
            return Ok(Answer::Unused(if self.cert.as_os_str().is_empty() {
                "no client certificate or token file configured".into()
            } else {
                format!(
                    "no client certificate at {} and no token file configured",
                    self.cert.display()
                )
            }));
        }
        let token = if have_token {
            let t = std::fs::read_to_string(&self.token).with_context(|| {
                format!(
                    "containers.kubelet_token_file: cannot read {}",
                    self.token.display()
                )
            })?;
            let t = t.trim().to_string();
            if t.is_empty() {
                bail!(
                    "containers.kubelet_token_file: {} is empty",
                    self.token.display()
                );
            }
            Some(t)
        } else {
            None
        };
        let stamp: Vec<Option<SystemTime>> = [&self.cert, &self.key, &self.ca]
            .iter()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect();
        if self.client.as_ref().is_none_or(|(s, _)| *s != stamp) {
            self.client = None;
            let client = self.build(have_cert)?;
            self.client = Some((stamp, client));
        }
        let Some((_, client)) = &self.client else {
            bail!("no kubelet client");
        };
        let mut req = client.get(&self.url);
        if let Some(t) = &token {
            req = req.bearer_auth(t);
        }
        let resp = req
            .send()
            .map_err(|e| anyhow!("GET {}: {}", self.url, crate::http::err_text(e)))?;
        let status = resp.status();
        if !status.is_success() {
            bail!("GET {}: HTTP status {status}", self.url);
        }
        let body = resp
            .text()
            .map_err(|e| anyhow!("GET {}: {}", self.url, crate::http::err_text(e)))?;
        Ok(Answer::Pods(
            parse_kubelet_pods(&body).with_context(|| format!("GET {}", self.url))?,
        ))
    }

    fn build(&self, with_cert: bool) -> Result<reqwest::blocking::Client> {
        let mut b = reqwest::blocking::Client::builder()
            .connect_timeout(self.timeout)
            .timeout(self.timeout)
            .pool_max_idle_per_host(1)
            .user_agent(concat!("bianque/", env!("CARGO_PKG_VERSION")));
        if with_cert {
            b = b.identity(identity(&self.cert, &self.key)?);
        }
        if self.insecure {
            b = b.danger_accept_invalid_certs(true);
        } else if !self.ca.as_os_str().is_empty() {
            // A kubelet's serving certificate never comes from a public CA: trust only the bundle.
            b = b.tls_built_in_root_certs(false);
            for c in crate::http::ca_bundle("containers.kubelet_ca_file", &self.ca)? {
                b = b.add_root_certificate(c);
            }
        }
        b.build().map_err(|e| {
            anyhow!(
                "containers.kubelet_client_cert / kubelet_client_key: {} and {} do not make a TLS client: {}",
                self.cert.display(),
                self.key.display(),
                crate::http::err_text(e)
            )
        })
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).with_context(|| format!("containers.{key}: cannot read {}", path.display()))
}

/// The client certificate chain and its key (one file may hold both, as the kubelet's does).
fn identity(cert: &Path, key: &Path) -> Result<reqwest::Identity> {
    let cert_pem = read("kubelet_client_cert", cert)?;
    if !contains(&cert_pem, b"-----BEGIN CERTIFICATE-----") {
        bail!(
            "containers.kubelet_client_cert: {} holds no PEM certificate",
            cert.display()
        );
    }
    let key_pem = if key.as_os_str().is_empty() || key == cert {
        cert_pem.clone()
    } else {
        read("kubelet_client_key", key)?
    };
    if !contains(&key_pem, b"PRIVATE KEY-----") {
        bail!(
            "containers.kubelet_client_key: {} holds no PEM private key",
            if key.as_os_str().is_empty() {
                cert
            } else {
                key
            }
            .display()
        );
    }
    let mut pem = key_pem;
    if key != cert && !key.as_os_str().is_empty() {
        pem.push(b'\n');
        pem.extend_from_slice(&cert_pem);
    }
    reqwest::Identity::from_pem(&pem).map_err(|e| {
        anyhow!(
            "containers.kubelet_client_cert / kubelet_client_key: cannot use {} and {}: {}",
            cert.display(),
            key.display(),
            crate::http::err_text(e)
        )
    })
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// Checks the `kubelet_*` keys (no file is read here: credentials may appear after the start).
pub fn validate(cfg: &ContainersConfig) -> Result<(), String> {
    if cfg.kubelet_url.is_empty() {
        return Ok(());
    }
    let url = reqwest::Url::parse(&cfg.kubelet_url).map_err(|e| {
        format!(
            "containers.kubelet_url: `{}` is not a URL ({e}); e.g. https://127.0.0.1:10250/pods",
            cfg.kubelet_url
        )
    })?;
    if url.scheme() != "https" || url.host().is_none() {
        return Err(format!(
            "containers.kubelet_url: `{}` must be https://<host>:<port>/pods (the authenticated port; the plain one is kubelet_read_only_address)",
            cfg.kubelet_url
        ));
    }
    if cfg.kubelet_insecure_skip_verify && !cfg.kubelet_ca_file.as_os_str().is_empty() {
        return Err("containers.kubelet_insecure_skip_verify = true and kubelet_ca_file: choose one (verify against the CA, or do not verify)".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> ContainersConfig {
        ContainersConfig {
            kubelet_url: url.into(),
            ..Default::default()
        }
    }

    #[test]
    fn url_and_key_combinations_are_checked() {
        assert!(validate(&cfg("https://127.0.0.1:10250/pods")).is_ok());
        assert!(validate(&cfg("")).is_ok());
        let e = validate(&cfg("http://127.0.0.1:10250/pods")).unwrap_err();
        assert!(e.contains("containers.kubelet_url"), "{e}");
        assert!(validate(&cfg("127.0.0.1:10250")).is_err());
        let mut c = cfg("https://node-1:10250/pods");
        c.kubelet_insecure_skip_verify = true;
        c.kubelet_ca_file = "/ca.pem".into();
        assert!(validate(&c).unwrap_err().contains("choose one"));
    }

    #[test]
    fn missing_credentials_mean_unused_and_bad_files_are_named() {
        let dir = std::env::temp_dir().join(format!("bianque-kubelet-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut c = cfg("https://127.0.0.1:1/pods");
        c.kubelet_client_cert = dir.join("absent.pem");
        c.kubelet_client_key = dir.join("absent.pem");
        let mut k = KubeletAuth::new(&c, Duration::from_millis(200)).unwrap();
        assert!(matches!(k.try_fetch(), Ok(Answer::Unused(_))));

        let not_pem = dir.join("not.pem");
        std::fs::write(&not_pem, "hello").unwrap();
        c.kubelet_client_cert = not_pem.clone();
        c.kubelet_client_key = not_pem.clone();
        let mut k = KubeletAuth::new(&c, Duration::from_millis(200)).unwrap();
        let e = format!("{:#}", k.try_fetch().err().unwrap());
        assert!(
            e.contains("kubelet_client_cert") && e.contains("not.pem"),
            "{e}"
        );

        c.kubelet_client_cert = PathBuf::new();
        c.kubelet_token_file = dir.join("no-token");
        let mut k = KubeletAuth::new(&c, Duration::from_millis(200)).unwrap();
        let e = format!("{:#}", k.try_fetch().err().unwrap());
        assert!(
            e.contains("kubelet_token_file") && e.contains("no-token"),
            "{e}"
        );

        std::fs::write(dir.join("token"), "abc\n").unwrap();
        c.kubelet_token_file = dir.join("token");
        c.kubelet_ca_file = not_pem.clone();
        let mut k = KubeletAuth::new(&c, Duration::from_millis(200)).unwrap();
        let e = format!("{:#}", k.try_fetch().err().unwrap());
        assert!(
            e.contains("kubelet_ca_file") && e.contains("not.pem"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
