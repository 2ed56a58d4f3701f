//! TLS to PostgreSQL (rustls), as libpq's `sslmode` and `sslrootcert` say.
//!
//! Every connection to the shared store (the approvals pool, its `LISTEN`
//! connection, the audit chain's, `airlock audit … --store`) is made from
//! one [`Target`]: the URL's own settings plus a rustls client. The two
//! libpq parameters tokio-postgres does not know are read (and removed)
//! here:
//!
//! | `sslmode` | TLS | server certificate |
//! |---|---|---|
//! | `disable` | never | — |
//! | `prefer` (default) | if the server offers it | checked against the CA when one is given (`sslrootcert`, `[store] ca_file`), else not checked |
//! | `require` | always | as `prefer` |
//! | `verify-ca` | always | signed by the CA (or the system's roots) |
//! | `verify-full` | always | `verify-ca`, and issued for the URL's host |
//!
//! `prefer` and `require` without a CA encrypt but do not authenticate the
//! server, exactly as libpq does: use `verify-full` across networks.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme,
};
use tokio_postgres::config::SslMode;
use tokio_postgres_rustls::MakeRustlsConnect;

/// A URL that cannot be turned into a connection (before any network).
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("sslmode `{0}` is not one of disable, prefer, require, verify-ca, verify-full")]
    BadMode(String),
    #[error("cannot read the CA file {path}: {error}")]
    CaUnreadable { path: String, error: String },
    #[error("the CA file {0} holds no PEM certificate")]
    CaEmpty(String),
    #[error(
        "sslmode {0} checks the server's certificate, but no CA was given and the system has no trusted roots"
    )]
    NoRoots(&'static str),
    #[error("{0}")]
    Url(String),
    #[error("TLS setup: {0}")]
    Rustls(String),
}

/// An error with its causes (`error performing TLS handshake: invalid
/// peer certificate: UnknownIssuer`): tokio-postgres's own message stops
/// at the first line, which does not say what was wrong.
pub fn with_causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        let more = c.to_string();
        if !text.ends_with(&more) {
            text = format!("{text}: {more}");
        }
        cause = c.source();
    }
    text
}

/// How much of the server's certificate is checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Check {
    Nothing,
    Chain,
    ChainAndHost,
}

/// Where to connect and how: a tokio-postgres config and its TLS maker.
#[derive(Clone)]
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: MakeRustlsConnect,
}

impl Target {
    /// Reads `url` (`postgres://…?sslmode=…&sslrootcert=…`).
    pub fn parse(url: &str) -> Result<Target, TlsSetupError> {
        let (rest, mode, root) = take_tls_params(url)?;
        let mut config = tokio_postgres::Config::from_str(&rest)
            .map_err(|e| TlsSetupError::Url(e.to_string()))?;
        let (ssl, check) = match (mode.as_deref().unwrap_or("prefer"), root.is_some()) {
            ("disable", _) => (SslMode::Disable, Check::Nothing),
            ("prefer", ca) => (
                SslMode::Prefer,
                if ca { Check::Chain } else { Check::Nothing },
            ),
            ("require", ca) => (
                SslMode::Require,
                if ca { Check::Chain } else { Check::Nothing },
            ),
            ("verify-ca", _) => (SslMode::Require, Check::Chain),
            ("verify-full", _) => (SslMode::Require, Check::ChainAndHost),
            (other, _) => return Err(TlsSetupError::BadMode(other.to_owned())),
        };
        config.ssl_mode(ssl);
        let label = if check == Check::ChainAndHost {
            "verify-full"
        } else {
            "verify-ca"
        };
        let client = client_config(check, root.as_deref(), label)?;
        Ok(Target {
            config,
            tls: MakeRustlsConnect::new(client),
        })
    }
}

/// `url` with `ca_file` as its `sslrootcert` (unless the URL names one):
/// how `[store] ca_file` reaches every connection.
pub fn with_ca_file(url: &str, ca_file: &Path) -> String {
    if query_params(url).any(|(k, _)| k == "sslrootcert") {
        return url.to_owned();
    }
    let encoded: String = ca_file
        .to_string_lossy()
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect();
    let glue = if url.contains('?') { '&' } else { '?' };
    format!("{url}{glue}sslrootcert={encoded}")
}

fn query_params(url: &str) -> impl Iterator<Item = (&str, &str)> {
    url.split_once('?')
        .map(|(_, q)| q)
        .unwrap_or("")
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
}

/// The URL without `sslmode` and `sslrootcert`, and their (decoded) values.
fn take_tls_params(url: &str) -> Result<(String, Option<String>, Option<String>), TlsSetupError> {
    let Some((base, _)) = url.split_once('?') else {
        return Ok((url.to_owned(), None, None));
    };
    let (mut mode, mut root, mut kept) = (None, None, Vec::new());
    for (key, value) in query_params(url) {
        match key {
            "sslmode" => mode = Some(decode(value)?),
            "sslrootcert" => root = Some(decode(value)?),
            _ => kept.push(format!("{key}={value}")),
        }
    }
    let rest = if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    };
    Ok((rest, mode, root))
}

fn decode(value: &str) -> Result<String, TlsSetupError> {
    let bad = || TlsSetupError::Url(format!("bad percent-encoding in `{value}`"));
    let bytes = value.as_bytes();
    let (mut out, mut i) = (Vec::with_capacity(bytes.len()), 0);
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = value.get(i + 1..i + 3).ok_or_else(bad)?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

fn client_config(
    check: Check,
    root: Option<&str>,
    label: &'static str,
) -> Result<ClientConfig, TlsSetupError> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsSetupError::Rustls(e.to_string()))?
        .dangerous();
    let verifier: Arc<dyn ServerCertVerifier> = match check {
        Check::Nothing => Arc::new(Unchecked(provider.signature_verification_algorithms)),
        Check::Chain | Check::ChainAndHost => {
            let roots = roots(root, label)?;
            let webpki = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsSetupError::Rustls(e.to_string()))?;
            if check == Check::Chain {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    Ok(builder
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth())
}

/// The CA file's certificates, or the system's roots without one.
fn roots(root: Option<&str>, label: &'static str) -> Result<RootCertStore, TlsSetupError> {
    let mut store = RootCertStore::empty();
    match root {
        Some(path) => {
            let unreadable = |e: &dyn std::fmt::Display| TlsSetupError::CaUnreadable {
                path: path.to_owned(),
                error: e.to_string(),
            };
            let pem = std::fs::read(path).map_err(|e| unreadable(&e))?;
            for cert in CertificateDer::pem_slice_iter(&pem) {
                store
                    .add(cert.map_err(|e| unreadable(&e))?)
                    .map_err(|e| unreadable(&e))?;
            }
            if store.is_empty() {
                return Err(TlsSetupError::CaEmpty(path.to_owned()));
            }
        }
        None => {
            let found = rustls_native_certs::load_native_certs();
            store.add_parsable_certificates(found.certs);
            if store.is_empty() {
                return Err(TlsSetupError::NoRoots(label));
            }
        }
    }
    Ok(store)
}

/// `prefer` / `require` without a CA: encrypted, the server not
/// authenticated (libpq's meaning). Handshake signatures are still checked.
#[derive(Debug)]
struct Unchecked(WebPkiSupportedAlgorithms);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the name in the
/// certificate is not compared with the host.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_params_are_taken_out_of_the_url_and_the_rest_kept() {
        let (rest, mode, root) = take_tls_params(
            "postgres://a@h/db?sslmode=verify-full&application_name=x&sslrootcert=%2Fetc%2Fca.pem",
        )
        .unwrap();
        assert_eq!(rest, "postgres://a@h/db?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/etc/ca.pem"));
    }

    #[test]
    fn a_bad_mode_is_named() {
        let e = Target::parse("postgres://a@h/db?sslmode=verify_full")
            .err()
            .unwrap();
        assert!(
            e.to_string()
                .contains("sslmode `verify_full` is not one of"),
            "{e}"
        );
    }

    #[test]
    fn ca_file_joins_the_url_unless_it_names_one() {
        let path = Path::new("/etc/air lock/ca.pem");
        assert_eq!(
            with_ca_file("postgres://a@h/db", path),
            "postgres://a@h/db?sslrootcert=/etc/air%20lock/ca.pem"
        );
        assert_eq!(
            with_ca_file("postgres://a@h/db?sslmode=require", path),
            "postgres://a@h/db?sslmode=require&sslrootcert=/etc/air%20lock/ca.pem"
        );
        let named = "postgres://a@h/db?sslrootcert=/x.pem";
        assert_eq!(with_ca_file(named, path), named);
        let (_, _, root) = take_tls_params(&with_ca_file("postgres://a@h/db", path)).unwrap();
        assert_eq!(root.as_deref(), Some("/etc/air lock/ca.pem"));
    }

    #[test]
    fn a_missing_ca_file_is_named() {
        let e =
            Target::parse("postgres://a@h/db?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem")
                .err()
                .unwrap();
        assert!(
            e.to_string()
                .contains("cannot read the CA file /nonexistent/ca.pem"),
            "{e}"
        );
    }
}
