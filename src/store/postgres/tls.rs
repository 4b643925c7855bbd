//! TLS from timebox to its PostgreSQL store: a small `tokio-postgres` connector over rustls.
//!
//! Where it sits: [`super::PgStore`]'s pool and [`super::migrate`] connect through it. The rustls
//! setup is the proxy's own upstream one ([`crate::proxy::tls::upstream_client_config`]), so
//! `[store] tls` means exactly what a target's `tls` means: `disable`, `require` (encrypted, the
//! certificate not checked, as libpq's `sslmode=require`) or `verify-full` (chain and host name
//! checked against `[store] ca` or the web PKI roots). The server's certificate hash is offered for
//! SCRAM-SHA-256-PLUS channel binding. It must never fall back to plaintext: with `require` or
//! `verify-full` the driver is told TLS is required, so a server without TLS is refused.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};

/// Makes one rustls connection per new store connection; `None` when TLS is off (the driver then
/// never asks for one).
#[derive(Clone)]
pub struct StoreTls(pub Option<Arc<rustls::ClientConfig>>);

impl<S> MakeTlsConnect<S> for StoreTls
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = StoreTlsStream<S>;
    type TlsConnect = StoreTlsConnect;
    type Error = io::Error;

    /// Called for every connection, TLS or not; the handshake ([`StoreTlsConnect::connect`]) only
    /// happens when the driver's `ssl_mode` asks for TLS, which is exactly when this is `Some`.
    fn make_tls_connect(&mut self, domain: &str) -> Result<StoreTlsConnect, io::Error> {
        let Some(config) = self.0.clone() else {
            return Ok(StoreTlsConnect(None));
        };
        let name = ServerName::try_from(domain.to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(StoreTlsConnect(Some((config, name))))
    }
}

/// The rustls setup and server name of one connection; `None` when TLS is off.
pub struct StoreTlsConnect(Option<(Arc<rustls::ClientConfig>, ServerName<'static>)>);

impl<S> TlsConnect<S> for StoreTlsConnect
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    type Stream = StoreTlsStream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<StoreTlsStream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let Some((config, name)) = self.0 else {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    "TLS to the store is disabled",
                ));
            };
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(name, stream)
                .await?;
            Ok(StoreTlsStream(tls))
        })
    }
}

pub struct StoreTlsStream<S>(tokio_rustls::client::TlsStream<S>);

impl<S: AsyncRead + AsyncWrite + Unpin> TlsStream for StoreTlsStream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        match self.0.get_ref().1.peer_certificates().and_then(|c| c.first()) {
            Some(cert) => ChannelBinding::tls_server_end_point(crate::proxy::tls::tls_server_end_point(cert)),
            None => ChannelBinding::none(),
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for StoreTlsStream<S> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for StoreTlsStream<S> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}
