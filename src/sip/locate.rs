//! RFC 3263 server location. (Temporary stand-in with the agreed API; replaced by the full module.)

use std::net::SocketAddr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
}

impl Transport {
    pub fn default_port(self) -> u16 {
        match self {
            Transport::Tls => 5061,
            _ => 5060,
        }
    }
    pub fn is_reliable(self) -> bool {
        !matches!(self, Transport::Udp)
    }
    pub fn via_name(self) -> &'static str {
        match self {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
            Transport::Tls => "TLS",
        }
    }
    pub fn from_param(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "udp" => Some(Transport::Udp),
            "tcp" => Some(Transport::Tcp),
            "tls" => Some(Transport::Tls),
            _ => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub transport: Transport,
    pub addr: SocketAddr,
    pub server_name: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    pub host: String,
    pub port: Option<u16>,
    pub transport: Option<Transport>,
    pub secure: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum LocateError {
    #[error("no records for {host}")]
    NoRecords { host: String },
}

pub struct Locator {
    supported: Vec<Transport>,
}

impl Locator {
    pub fn new(_nameservers: &[SocketAddr], supported: &[Transport]) -> Result<Self, LocateError> {
        Ok(Locator {
            supported: supported.to_vec(),
        })
    }

    pub async fn locate(&self, dest: &Destination) -> Result<Vec<Target>, LocateError> {
        let host = dest.host.trim_start_matches('[').trim_end_matches(']');
        let ip: std::net::IpAddr = host.parse().map_err(|_| LocateError::NoRecords {
            host: dest.host.clone(),
        })?;
        // RFC 3263 4.1, RFC 5630: a sips: URI is reached over TLS, whatever its transport
        // parameter says.
        let transport = if dest.secure {
            Transport::Tls
        } else {
            dest.transport
                .unwrap_or(if self.supported.contains(&Transport::Udp) {
                    Transport::Udp
                } else {
                    Transport::Tcp
                })
        };
        Ok(vec![Target {
            transport,
            addr: SocketAddr::new(ip, dest.port.unwrap_or(transport.default_port())),
            server_name: dest.host.clone(),
        }])
    }
}
