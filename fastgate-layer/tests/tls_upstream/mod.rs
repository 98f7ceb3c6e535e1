//! A TLS upstream on 127.0.0.1 with a CA and certificates made at test time (rcgen): served by
//! hyper-util's auto builder (HTTP/1.1 or HTTP/2, as ALPN decides) behind tokio-rustls, optionally
//! asking for a client certificate. Shared by the layer's and the server's tests (`#[path]`).
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::{HeaderMap, Request, Response, Version};
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::mpsc;

/// The body type the upstream's handler answers with.
pub type UpBody = BoxBody<Bytes, std::io::Error>;

type Handler = Arc<
    dyn Fn(Request<Incoming>) -> Pin<Box<dyn Future<Output = Response<UpBody>> + Send>>
        + Send
        + Sync,
>;

/// A certificate authority made for one test.
pub struct Ca {
    /// The CA certificate, PEM.
    pub pem: String,
    pub der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate signed by a [`Ca`], with its private key.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_der: CertificateDer<'static>,
    pub key_der: Vec<u8>,
}

impl Ca {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        Self {
            pem: cert.pem(),
            der: cert.der().clone(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses).
    pub fn server_cert(&self, names: &[&str]) -> Leaf {
        self.issue(names, ExtendedKeyUsagePurpose::ServerAuth)
    }

    /// A client certificate (mutual TLS) named `name`.
    pub fn client_cert(&self, name: &str) -> Leaf {
        self.issue(&[name], ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn issue(&self, names: &[&str], usage: ExtendedKeyUsagePurpose) -> Leaf {
        let names: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
        let mut params = CertificateParams::new(names.clone()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, &names[0]);
        params.use_authority_key_identifier_extension = true;
        params.key_usages.push(KeyUsagePurpose::DigitalSignature);
        params.extended_key_usages.push(usage);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_der: cert.der().clone(),
            key_der: key.serialize_der(),
        }
    }
}

/// One request as the TLS upstream received it.
#[derive(Debug)]
pub struct Seen {
    pub version: Version,
    pub path: String,
    pub headers: HeaderMap,
    /// Whether the connection's client presented a certificate.
    pub client_cert: bool,
}

/// A running TLS upstream.
pub struct TlsUpstream {
    pub addr: SocketAddr,
    /// Every request, in arrival order.
    pub seen: mpsc::UnboundedReceiver<Seen>,
    handshakes_failed: Arc<AtomicUsize>,
}

impl TlsUpstream {
    /// TLS handshakes that failed (certificate refused by either side, no common protocol).
    pub fn handshakes_failed(&self) -> usize {
        self.handshakes_failed.load(Ordering::SeqCst)
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Serve `handler` over TLS with `cert` on 127.0.0.1:0, offering `alpn` (e.g. `[b"h2",
/// b"http/1.1"]`), and requiring a client certificate signed by `client_ca` when given.
pub async fn tls_upstream<F, Fut>(
    cert: &Leaf,
    alpn: &[&[u8]],
    client_ca: Option<&Ca>,
    handler: F,
) -> TlsUpstream
where
    F: Fn(Request<Incoming>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<UpBody>> + Send + 'static,
{
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap();
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(ca.der.clone()).unwrap();
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider(),
            )
            .build()
            .unwrap();
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(cert.key_der.clone()));
    let mut config = builder
        .with_single_cert(vec![cert.cert_der.clone()], key)
        .unwrap();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));

    let handler: Handler = Arc::new(move |req| Box::pin(handler(req)));
    let (seen_tx, seen) = mpsc::unbounded_channel();
    let handshakes_failed = Arc::new(AtomicUsize::new(0));
    let failed = Arc::clone(&handshakes_failed);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let handler = Arc::clone(&handler);
            let seen_tx = seen_tx.clone();
            let failed = Arc::clone(&failed);
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(stream).await else {
                    failed.fetch_add(1, Ordering::SeqCst);
                    return;
                };
                let client_cert = tls.get_ref().1.peer_certificates().is_some();
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let _ = seen_tx.send(Seen {
                        version: req.version(),
                        path: req.uri().path().to_owned(),
                        headers: req.headers().clone(),
                        client_cert,
                    });
                    let fut = handler(req);
                    async move { Ok::<_, Infallible>(fut.await) }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    TlsUpstream {
        addr,
        seen,
        handshakes_failed,
    }
}

/// One `CONNECT` as the proxy received it.
#[derive(Debug)]
pub struct Tunnelled {
    /// The request target (`host:port`).
    pub target: String,
    /// The `Proxy-Authorization` header, if any.
    pub auth: Option<String>,
}

/// A running HTTP `CONNECT` proxy.
pub struct ConnectProxy {
    pub addr: SocketAddr,
    /// Every `CONNECT`, in arrival order (refused ones included).
    pub seen: mpsc::UnboundedReceiver<Tunnelled>,
}

/// An HTTP proxy on 127.0.0.1:0 that accepts `CONNECT host:port` and tunnels it to
/// 127.0.0.1:port, whatever the host (so a backend can have a name nothing resolves). With
/// `auth = Some(v)` it answers 407 unless `Proxy-Authorization` is exactly `v`.
pub async fn connect_proxy(auth: Option<&str>) -> ConnectProxy {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let auth = auth.map(str::to_owned);
    let (tx, seen) = mpsc::unbounded_channel();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = listener.accept().await {
            let tx = tx.clone();
            let auth = auth.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") {
                    if head.len() > 16 * 1024 || client.read(&mut byte).await.unwrap_or(0) == 0 {
                        return;
                    }
                    head.push(byte[0]);
                }
                let head = String::from_utf8_lossy(&head).into_owned();
                let mut lines = head.split("\r\n");
                let request = lines.next().unwrap_or_default();
                let target = request.split(' ').nth(1).unwrap_or_default().to_owned();
                let given = lines
                    .filter_map(|l| l.split_once(':'))
                    .find(|(k, _)| k.trim().eq_ignore_ascii_case("proxy-authorization"))
                    .map(|(_, v)| v.trim().to_owned());
                let _ = tx.send(Tunnelled {
                    target: target.clone(),
                    auth: given.clone(),
                });
                if !request.starts_with("CONNECT ") {
                    let _ = client
                        .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                        .await;
                    return;
                }
                if auth.is_some() && given != auth {
                    let _ = client
                        .write_all(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\nContent-Length: 0\r\n\r\n")
                        .await;
                    return;
                }
                let port = target.rsplit_once(':').map_or("443", |(_, p)| p);
                let Ok(mut upstream) =
                    tokio::net::TcpStream::connect(format!("127.0.0.1:{port}")).await
                else {
                    let _ = client.write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n").await;
                    return;
                };
                if client
                    .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
            });
        }
    });
    ConnectProxy { addr, seen }
}

/// A `Proxy-Authorization: Basic` value for `user:password`.
pub fn basic_auth(user: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}
