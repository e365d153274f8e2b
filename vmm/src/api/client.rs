//! The client end of an API socket: one JSON request, one JSON answer per line. [`Client`]
//! is generic over the request and answer types; [`VmClient`] has the vmm's requests as
//! methods.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::protocol::{NetDevice, Request, Response};

/// Errors talking to an API socket.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Nobody listens there.
    #[error("cannot connect to {0}")]
    Connect(PathBuf, #[source] std::io::Error),
    /// The request could not be sent.
    #[error("cannot send the request")]
    Send(#[source] std::io::Error),
    /// No answer came (or not in time).
    #[error("no answer")]
    Receive(#[source] std::io::Error),
    /// The server closed the connection without answering.
    #[error("the server closed the connection without answering")]
    Closed,
    /// The answer is not what the protocol says.
    #[error("malformed answer: {0}")]
    Malformed(String, #[source] serde_json::Error),
    /// The request could not be encoded.
    #[error("cannot encode the request")]
    Encode(#[source] serde_json::Error),
}

/// A connection to an API socket.
#[derive(Debug)]
pub struct Client {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Client {
    /// Connects to `path`; every answer must come within `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, ClientError> {
        let stream =
            UnixStream::connect(path).map_err(|e| ClientError::Connect(path.to_path_buf(), e))?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(|e| ClientError::Connect(path.to_path_buf(), e))?;
        let reader = stream
            .try_clone()
            .map_err(|e| ClientError::Connect(path.to_path_buf(), e))?;
        Ok(Self {
            writer: stream,
            reader: BufReader::new(reader),
        })
    }

    /// Sends one raw line (a newline is added) and returns the answer line: for tests
    /// that send what the typed methods never would.
    pub fn call_raw(&mut self, line: &[u8]) -> Result<String, ClientError> {
        let mut text = line.to_vec();
        text.push(b'\n');
        self.writer.write_all(&text).map_err(ClientError::Send)?;
        let mut answer = String::new();
        match self.reader.read_line(&mut answer) {
            Ok(0) => Err(ClientError::Closed),
            Ok(_) => Ok(answer),
            Err(e) => Err(ClientError::Receive(e)),
        }
    }

    /// Sends `request` and decodes the answer.
    pub fn call<Q: Serialize, A: DeserializeOwned>(
        &mut self,
        request: &Q,
    ) -> Result<A, ClientError> {
        let line = serde_json::to_vec(request).map_err(ClientError::Encode)?;
        let answer = self.call_raw(&line)?;
        serde_json::from_str(&answer).map_err(|e| ClientError::Malformed(answer.clone(), e))
    }
}

/// A client of a vmm's API socket. Each method returns the server's answer, which says
/// whether the request succeeded (`ok`, or `error`).
#[derive(Debug)]
pub struct VmClient(pub Client);

impl VmClient {
    /// How long an answer may take: an orderly removal waits for the guest (up to 30 s).
    pub const TIMEOUT: Duration = Duration::from_secs(60);

    /// Connects to the vmm at `path`.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        Client::connect(path, Self::TIMEOUT).map(Self)
    }

    /// Sends `request`.
    pub fn request(&mut self, request: &Request) -> Result<Response, ClientError> {
        self.0.call(request)
    }

    /// The VM's status.
    pub fn status(&mut self) -> Result<Response, ClientError> {
        self.request(&Request::Status)
    }

    /// Stops the VM (answered once vCPUs and devices hold still).
    pub fn pause(&mut self) -> Result<Response, ClientError> {
        self.request(&Request::Pause)
    }

    /// Runs it again.
    pub fn resume(&mut self) -> Result<Response, ClientError> {
        self.request(&Request::Resume)
    }

    /// The root ports and their devices.
    pub fn device_list(&mut self) -> Result<Response, ClientError> {
        self.request(&Request::DeviceList)
    }

    /// Hot-adds a virtio-net device.
    pub fn add_net(&mut self, net: NetDevice, port: Option<u8>) -> Result<Response, ClientError> {
        self.request(&Request::DeviceAdd {
            net: Some(net),
            vf: None,
            port,
        })
    }

    /// Hot-adds the VF served on `socket`.
    pub fn add_vf(
        &mut self,
        socket: &std::path::Path,
        port: Option<u8>,
    ) -> Result<Response, ClientError> {
        self.request(&Request::DeviceAdd {
            net: None,
            vf: Some(super::VfDevice {
                socket: socket.to_path_buf(),
            }),
            port,
        })
    }

    /// Removes a device, orderly or by surprise.
    pub fn remove(&mut self, id: &str, surprise: bool) -> Result<Response, ClientError> {
        self.request(&Request::DeviceRemove {
            id: id.to_string(),
            surprise,
        })
    }
}
