//! [`TunnelStream`]: the application's end of one tunnel stream, bridged to a socket (or
//! anything that reads and writes) until both directions have ended. The endpoint's task holds
//! the other end of its channels (`Up`, `Down`).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, mpsc};

use crate::error::TunnelError;
use crate::frame::{MAX_DATA, ResetCode};

/// Bridge → endpoint.
pub(crate) enum Up {
    Bytes { id: u32, bytes: Vec<u8> },
    Finish { id: u32 },
    Abort { id: u32, reason: String },
}

/// Endpoint → bridge.
pub(crate) enum Down {
    /// The peer accepted a stream opened here; before anything else.
    Established,
    Bytes(Vec<u8>),
    End,
    Reset {
        code: ResetCode,
        reason: String,
    },
}

/// Bytes moved by a finished bridge.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Moved {
    /// From the local side into the tunnel.
    pub up: u64,
    /// From the tunnel to the local side.
    pub down: u64,
}

pub struct TunnelStream {
    id: u32,
    up_permits: Arc<Semaphore>,
    up: mpsc::Sender<Up>,
    down: mpsc::Receiver<Down>,
    /// What [`TunnelStream::established`] took off `down` that the bridge must still see.
    held: Option<Down>,
    wake_me: Arc<AtomicBool>,
    drained: mpsc::Sender<u32>,
}

impl TunnelStream {
    pub(crate) fn new(
        id: u32,
        up_permits: Arc<Semaphore>,
        up: mpsc::Sender<Up>,
        down: mpsc::Receiver<Down>,
        wake_me: Arc<AtomicBool>,
        drained: mpsc::Sender<u32>,
    ) -> Self {
        Self {
            id,
            up_permits,
            up,
            down,
            held: None,
            wake_me,
            drained,
        }
    }

    pub fn id(&self) -> u32 {
        self.id
    }

    /// For a stream opened here: waits until the peer accepts it (`Ok`) or refuses it (the
    /// reset, with the peer's code and reason). The caller bounds the wait: a peer that is
    /// gone answers neither.
    pub async fn established(&mut self) -> Result<(), TunnelError> {
        if self.held.is_some() {
            return Ok(());
        }
        let first = self.down.recv().await;
        if self.wake_me.swap(false, Ordering::AcqRel) {
            let _ = self.drained.try_send(self.id);
        }
        match first {
            Some(Down::Established) => Ok(()),
            Some(Down::Reset { code, reason }) => Err(TunnelError::Reset { code, reason }),
            // Bytes or the end come after the acceptance only; the bridge gets them.
            Some(other) => {
                self.held = Some(other);
                Ok(())
            }
            None => Err(TunnelError::Stopped),
        }
    }

    /// Resets the stream (the peer is told `reason`) without bridging it.
    pub async fn abort(self, reason: &str) {
        let _ = self
            .up
            .send(Up::Abort {
                id: self.id,
                reason: reason.to_string(),
            })
            .await;
    }

    /// Copies both ways between `io` and the tunnel until both directions have ended: the
    /// local side's end of input is a fin to the peer, the peer's fin shuts `io`'s write side.
    /// A reset on either side ends it with an error (and resets the peer's side). The two
    /// directions run independently, so a local side that writes a lot before it reads does
    /// not wait on a bridge that waits on it.
    pub async fn bridge<T>(self, io: T) -> Result<Moved, TunnelError>
    where
        T: AsyncRead + AsyncWrite,
    {
        let (mut reader, mut writer) = tokio::io::split(io);
        let Self {
            id,
            up_permits,
            up,
            mut down,
            mut held,
            wake_me,
            drained,
        } = self;
        let abort = |reason: String| {
            let up = up.clone();
            async move {
                let _ = up
                    .send(Up::Abort {
                        id,
                        reason: reason.clone(),
                    })
                    .await;
                TunnelError::Reset {
                    code: ResetCode::Aborted,
                    reason,
                }
            }
        };
        let upward = async {
            let mut buf = vec![0u8; MAX_DATA];
            let mut total = 0u64;
            loop {
                // Read only as much as the stream has send buffer for.
                drop(
                    up_permits
                        .acquire()
                        .await
                        .map_err(|_| TunnelError::Stopped)?,
                );
                let room = up_permits.available_permits().clamp(1, buf.len());
                let n = match reader.read(&mut buf[..room]).await {
                    Ok(0) => {
                        up.send(Up::Finish { id })
                            .await
                            .map_err(|_| TunnelError::Stopped)?;
                        return Ok(total);
                    }
                    Ok(n) => n,
                    Err(e) => return Err(abort(format!("local read failed: {e}")).await),
                };
                // Only this task takes permits, so these are there; the endpoint gives them
                // back as the stream's send buffer frees.
                up_permits
                    .acquire_many(n as u32)
                    .await
                    .map_err(|_| TunnelError::Stopped)?
                    .forget();
                up.send(Up::Bytes {
                    id,
                    bytes: buf[..n].to_vec(),
                })
                .await
                .map_err(|_| TunnelError::Stopped)?;
                total += n as u64;
            }
        };
        let downward = async {
            let mut total = 0u64;
            loop {
                let chunk = match held.take() {
                    Some(chunk) => Some(chunk),
                    None => down.recv().await,
                };
                if wake_me.swap(false, Ordering::AcqRel) {
                    let _ = drained.try_send(id);
                }
                match chunk {
                    Some(Down::Established) => {}
                    Some(Down::Bytes(bytes)) => {
                        if let Err(e) = writer.write_all(&bytes).await {
                            return Err(abort(format!("local write failed: {e}")).await);
                        }
                        total += bytes.len() as u64;
                    }
                    Some(Down::End) => {
                        let _ = writer.shutdown().await;
                        return Ok(total);
                    }
                    Some(Down::Reset { code, reason }) => {
                        return Err(TunnelError::Reset { code, reason });
                    }
                    None => return Err(TunnelError::Stopped),
                }
            }
        };
        tokio::pin!(upward, downward);
        let (mut moved_up, mut moved_down) = (None, None);
        while moved_up.is_none() || moved_down.is_none() {
            tokio::select! {
                r = &mut upward, if moved_up.is_none() => moved_up = Some(r?),
                r = &mut downward, if moved_down.is_none() => moved_down = Some(r?),
            }
        }
        Ok(Moved {
            up: moved_up.unwrap_or_default(),
            down: moved_down.unwrap_or_default(),
        })
    }
}
