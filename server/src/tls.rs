//! `api_gateway.tls`: the rustls client settings for `https://` backends, built from PEM files.
//!
//! Errors name the file and what is wrong with it, never its content (a key file is a secret).

use std::path::Path;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest as _, Sha256};

use crate::config::{UpstreamTlsConfig, relative_to_config};

/// A config key and what is wrong with it.
pub type TlsConfigError = (&'static str, String);

/// A path that is set and not blank, without surrounding spaces.
fn set(v: &Option<String>) -> Option<&str> {
    v.as_deref().map(str::trim).filter(|p| !p.is_empty())
}

/// The client settings `tls` asks for (with nothing set: Mozilla's roots, no client
/// certificate), a fingerprint of `tls` and of the files' bytes (to tell whether a reload
/// changed anything), and warnings that did not stop the load. `config_path` anchors relative
/// paths.
pub fn client_config(
    config_path: &Path,
    tls: &UpstreamTlsConfig,
) -> Result<(rustls::ClientConfig, [u8; 32], Vec<String>), TlsConfigError> {
    let (ca_file, cert_file, key_file) = (
        set(&tls.ca_file),
        set(&tls.client_cert_file),
        set(&tls.client_key_file),
    );
    let mut warnings = Vec::new();
    let mut fingerprint = Sha256::new();
    fingerprint.update(format!("{tls:?}"));
    let mut roots = rustls::RootCertStore::empty();
    if tls.public_roots {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    } else if ca_file.is_none() {
        return Err((
            "api_gateway.tls.public_roots",
            "false trusts no CA at all unless ca_file names one".into(),
        ));
    }
    if let Some(file) = ca_file {
        const KEY: &str = "api_gateway.tls.ca_file";
        let path = relative_to_config(config_path, file);
        let certs = read_certs(&path, &mut fingerprint).map_err(|m| (KEY, m))?;
        // A system or corporate bundle may hold a certificate webpki cannot parse: skipped with
        // a warning, as long as one is usable.
        let (added, skipped) = roots.add_parsable_certificates(certs);
        if added == 0 {
            return Err((
                KEY,
                format!("{} holds no usable CA certificate", path.display()),
            ));
        }
        if skipped > 0 {
            warnings.push(format!(
                "{KEY}: {skipped} certificate(s) in {} could not be parsed and were skipped ({added} trusted)",
                path.display()
            ));
        }
    }
    let builder = fastgate_layer::forward::tls_config_builder()
        .map_err(|e| ("api_gateway.tls", format!("TLS set-up failed: {e}")))?
        .with_root_certificates(roots);
    let config = match (cert_file, key_file) {
        (None, None) => builder.with_no_client_auth(),
        (Some(_), None) => {
            return Err((
                "api_gateway.tls.client_key_file",
                "must be set when client_cert_file is".into(),
            ));
        }
        (None, Some(_)) => {
            return Err((
                "api_gateway.tls.client_cert_file",
                "must be set when client_key_file is".into(),
            ));
        }
        (Some(cert), Some(key)) => {
            let cert_path = relative_to_config(config_path, cert);
            let chain = read_certs(&cert_path, &mut fingerprint)
                .map_err(|m| ("api_gateway.tls.client_cert_file", m))?;
            let key_path = relative_to_config(config_path, key);
            let key = read_key(&key_path, &mut fingerprint)
                .map_err(|m| ("api_gateway.tls.client_key_file", m))?;
            builder.with_client_auth_cert(chain, key).map_err(|e| {
                (
                    "api_gateway.tls.client_key_file",
                    format!(
                        "{} and {} are not a usable certificate and key pair: {e}",
                        cert_path.display(),
                        key_path.display()
                    ),
                )
            })?
        }
    };
    Ok((config, fingerprint.finalize().into(), warnings))
}

/// The file's bytes, also fed to `fingerprint`.
fn read(path: &Path, fingerprint: &mut Sha256) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    fingerprint.update((bytes.len() as u64).to_le_bytes());
    fingerprint.update(&bytes);
    Ok(bytes)
}

/// Every certificate of a PEM file; an error when it holds none.
fn read_certs(
    path: &Path,
    fingerprint: &mut Sha256,
) -> Result<Vec<CertificateDer<'static>>, String> {
    let pem = read(path, fingerprint)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a readable PEM file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "{} holds no certificate (expected PEM: -----BEGIN CERTIFICATE-----)",
            path.display()
        ));
    }
    Ok(certs)
}

/// The first private key of a PEM file. The underlying error is not shown: its text could quote
/// part of the file, and the file is a secret.
fn read_key(path: &Path, fingerprint: &mut Sha256) -> Result<PrivateKeyDer<'static>, String> {
    let pem = read(path, fingerprint)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|_| {
        format!(
            "{} holds no readable private key (expected unencrypted PEM: PKCS#8, PKCS#1 or SEC1)",
            path.display()
        )
    })
}
