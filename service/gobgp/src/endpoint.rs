//! Where gobgpd's API is: `host:port` over TCP, or `unix:///path` over a unix socket.
//!
//! The unix socket is what herald's shipped configs use: a TCP port on the node's loopback is open
//! to every process on the node (gobgpd's API has no authentication), a socket in a directory
//! shared only by the pod's two containers is open to the users the file's mode lets in.

use std::path::PathBuf;

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint, Uri};

pub use herald_core::config::{GobgpAddress, UNIX_SCHEME};

/// How to connect to a [`GobgpAddress`].
pub trait Connect {
    /// An endpoint with the settings herald wants (tonic needs an http URI even for a unix
    /// socket; its authority is then only a placeholder), and how to connect it.
    fn endpoint(&self) -> Result<GobgpEndpoint, String>;
}

impl Connect for GobgpAddress {
    fn endpoint(&self) -> Result<GobgpEndpoint, String> {
        let uri = match self {
            GobgpAddress::Tcp(address) => format!("http://{address}"),
            // Never resolved: the connector below ignores it.
            GobgpAddress::Unix(_) => "http://gobgpd.sock".to_string(),
        };
        let endpoint =
            Endpoint::from_shared(uri).map_err(|e| format!("bad gobgp address {self:?}: {e}"))?;
        Ok(GobgpEndpoint {
            endpoint,
            socket: match self {
                GobgpAddress::Unix(p) => Some(p.clone()),
                _ => None,
            },
        })
    }
}

/// An [`Endpoint`] and, for a unix socket, the socket's path.
#[derive(Debug, Clone)]
pub struct GobgpEndpoint {
    endpoint: Endpoint,
    socket: Option<PathBuf>,
}

impl GobgpEndpoint {
    /// Changes the endpoint's settings (timeouts, windows).
    pub fn map(self, f: impl FnOnce(Endpoint) -> Endpoint) -> Self {
        GobgpEndpoint {
            endpoint: f(self.endpoint),
            ..self
        }
    }

    /// A channel that connects when first used, and again after the connection is lost.
    pub fn connect_lazy(&self) -> Channel {
        match &self.socket {
            None => self.endpoint.connect_lazy(),
            Some(path) => {
                let path = path.clone();
                self.endpoint
                    .connect_with_connector_lazy(tower::service_fn(move |_: Uri| {
                        let path = path.clone();
                        async move {
                            tokio::net::UnixStream::connect(path)
                                .await
                                .map(TokioIo::new)
                        }
                    }))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        assert_eq!(
            GobgpAddress::parse("127.0.0.1:50051"),
            Ok(GobgpAddress::Tcp("127.0.0.1:50051".into()))
        );
        assert_eq!(
            GobgpAddress::parse("[::1]:50051"),
            Ok(GobgpAddress::Tcp("[::1]:50051".into()))
        );
        assert_eq!(
            GobgpAddress::parse("unix:///run/gobgp/api.sock"),
            Ok(GobgpAddress::Unix("/run/gobgp/api.sock".into()))
        );
        for bad in [
            "unix://run/gobgp/api.sock",
            "unix:///",
            "unix://",
            "127.0.0.1",
            ":50051",
            "http://127.0.0.1:50051",
            "unix:///run/gobgp/",
        ] {
            let error = GobgpAddress::parse(bad).unwrap_err();
            assert!(error.contains(bad), "{error}");
        }
    }
}
