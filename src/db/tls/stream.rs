//! The glue between tokio-postgres and rustls: a [`MakeTlsConnect`] that hands tokio-postgres a
//! rustls handshake for each host, and the encrypted stream it returns. tokio-postgres decides whether
//! TLS is attempted at all (from the sslmode); this file only performs it.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures::future::BoxFuture;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// Makes one rustls handshake per host tokio-postgres connects to.
#[derive(Clone)]
pub struct MakeRustls {
    pub(super) config: Arc<ClientConfig>,
}

impl<S> MakeTlsConnect<S> for MakeRustls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type TlsConnect = RustlsConnect;
    type Error = HandshakeError;

    fn make_tls_connect(&mut self, domain: &str) -> Result<RustlsConnect, HandshakeError> {
        // tokio-postgres asks even when TLS will not be tried (a Unix socket has no host name, and
        // sslmode=disable never shakes hands), so a name that is not one only fails a real handshake.
        let name = ServerName::try_from(domain).ok().map(|name| name.to_owned());
        Ok(RustlsConnect { config: self.config.clone(), host: domain.to_owned(), name })
    }
}

/// One pending handshake with `host`.
pub struct RustlsConnect {
    config: Arc<ClientConfig>,
    host: String,
    name: Option<ServerName<'static>>,
}

impl<S> TlsConnect<S> for RustlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = RustlsStream<S>;
    type Error = HandshakeError;
    type Future = BoxFuture<'static, Result<RustlsStream<S>, HandshakeError>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let Some(name) = self.name else {
                let problem = io::Error::new(io::ErrorKind::InvalidInput, "not a DNS name or IP address");
                return Err(HandshakeError { host: self.host, source: problem });
            };
            tokio_rustls::TlsConnector::from(self.config)
                .connect(name, stream)
                .await
                .map(|stream| RustlsStream(Box::new(stream)))
                .map_err(|source| HandshakeError { host: self.host, source })
        })
    }
}

/// A TLS handshake with `host` that failed; [`super::ConnectError`] turns it into one clear line.
#[derive(Debug, thiserror::Error)]
#[error("TLS handshake with {host} failed")]
pub struct HandshakeError {
    /// The host name the certificate was checked against.
    pub host: String,
    /// tokio-rustls' error: a [`rustls::Error`] inside an `InvalidData` io error, or the socket's own.
    #[source]
    pub source: io::Error,
}

impl HandshakeError {
    /// The rustls error behind this failure, if it was one (rather than the socket closing).
    pub fn rustls(&self) -> Option<&rustls::Error> {
        self.source.get_ref()?.downcast_ref::<rustls::Error>()
    }
}

/// A rustls client stream as tokio-postgres wants it.
pub struct RustlsStream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for RustlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        let (_, session) = self.0.get_ref();
        let end_entity = session.peer_certificates().and_then(|chain| chain.first());
        match end_entity.and_then(|certificate| super::binding::server_end_point(certificate)) {
            Some(hash) => ChannelBinding::tls_server_end_point(hash),
            None => ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for RustlsStream<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for RustlsStream<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut *self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.0).poll_shutdown(cx)
    }
}
