//! TLS to the compose deployment's NATS from the host.
//!
//! The suite dials each NATS container by its address on the project network, which
//! NATS' certificate cannot name (addresses are Docker's choice, per project). So the
//! certificate is checked as fully as any client checks it (chain to the run's local
//! CA, validity, key usage), against the name the containers themselves use, `nats`,
//! instead of the dialled address. The address came from the engine for that
//! container, so the name stands for it.

use std::path::Path;
use std::sync::Arc;

use anyhow::Context as _;
use async_nats::rustls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};

/// A client config that trusts only the CA in `ca_pem` and checks the server's
/// certificate for `name`, whatever address was dialled.
pub fn client_config(ca_pem: &Path, name: &str) -> anyhow::Result<rustls::ClientConfig> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca_pem)
        .with_context(|| format!("cannot read the CA {}", ca_pem.display()))?
    {
        roots
            .add(cert.with_context(|| format!("{} holds a bad certificate", ca_pem.display()))?)
            .with_context(|| format!("{} is not a CA certificate", ca_pem.display()))?;
    }
    let inner = WebPkiServerVerifier::builder(Arc::new(roots))
        .build()
        .context("cannot build a certificate verifier")?;
    let name = ServerName::try_from(name.to_string())
        .with_context(|| format!("`{name}` is not a server name"))?;
    Ok(rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(NamedVerifier { inner, name }))
        .with_no_client_auth())
}

#[derive(Debug)]
struct NamedVerifier {
    inner: Arc<WebPkiServerVerifier>,
    name: ServerName<'static>,
}

impl ServerCertVerifier for NamedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _dialled: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.inner
            .verify_server_cert(end_entity, intermediates, &self.name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}
