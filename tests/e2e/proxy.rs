//! A fault injector: a TCP proxy between the controller and the API server
//! whose mode a test switches, to play the API server's bad days.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

/// What the proxy does with connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mode {
    /// Every byte is forwarded.
    Pass,
    /// A connection idle for [`IDLE`] is forgotten for good, as by a load
    /// balancer that drops idle connections: nothing more is forwarded
    /// either way and nothing is closed (no FIN, no RST), so its client sees
    /// a connection that is open and silent. New connections pass.
    BlackHoleWhenIdle,
    /// The API server is down: connecting is refused (nothing listens) and
    /// open connections are reset.
    Refuse,
    /// The API server hangs: connections are accepted and nothing is
    /// answered, nor forwarded on open connections, until the mode changes
    /// (what was held is delivered then).
    Hang,
}

/// How long a connection must be idle for [`Mode::BlackHoleWhenIdle`] to
/// forget it.
pub(crate) const IDLE: Duration = Duration::from_secs(1);

/// A running fault injector in front of one upstream address.
pub(crate) struct FaultProxy {
    /// Where the controller connects.
    pub(crate) address: SocketAddr,
    mode: watch::Sender<Mode>,
    forgotten: Forgotten,
}

/// The connections the proxy forgot, kept open (never closed) for as long
/// as the proxy runs.
type Forgotten = Arc<Mutex<Vec<(TcpStream, TcpStream)>>>;

impl FaultProxy {
    /// A proxy to `upstream` on a free local port, in [`Mode::Pass`].
    pub(crate) async fn start(upstream: SocketAddr) -> FaultProxy {
        let first = listen("127.0.0.1:0".parse().unwrap()).unwrap();
        let address = first.local_addr().unwrap();
        let (mode, mut changes) = watch::channel(Mode::Pass);
        let forgotten: Forgotten = Arc::default();
        let kept = forgotten.clone();
        tokio::spawn(async move {
            let mut listener = Some(first);
            loop {
                let Some(bound) = listener.take() else {
                    // Refusing: nothing listens until the mode changes.
                    if changes.changed().await.is_err() {
                        return;
                    }
                    if *changes.borrow() != Mode::Refuse {
                        // The port was ours a moment ago; SO_REUSEADDR
                        // lets it be bound again at once.
                        listener = Some(listen(address).expect("the proxy's port is free again"));
                    }
                    continue;
                };
                tokio::select! {
                    accepted = bound.accept() => {
                        if let Ok((inbound, _)) = accepted {
                            tokio::spawn(relay(inbound, upstream, changes.clone(), forgotten.clone()));
                        }
                        listener = Some(bound);
                    }
                    changed = changes.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        if *changes.borrow() != Mode::Refuse {
                            listener = Some(bound);
                        }
                    }
                }
            }
        });
        FaultProxy {
            address,
            mode,
            forgotten: kept,
        }
    }

    /// How many connections [`Mode::BlackHoleWhenIdle`] has forgotten.
    pub(crate) fn forgotten(&self) -> usize {
        self.forgotten.lock().unwrap().len()
    }

    /// Switches the mode; it applies to open connections at once.
    pub(crate) fn set(&self, mode: Mode) {
        self.mode.send_replace(mode);
    }
}

/// A listening socket on `address` that can be bound again as soon as it is
/// closed.
fn listen(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(128)
}

/// Forwards one connection both ways, as the mode says.
async fn relay(
    mut inbound: TcpStream,
    upstream: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    forgotten: Forgotten,
) {
    let Ok(mut outbound) = TcpStream::connect(upstream).await else {
        return;
    };
    let (mut from_client, mut from_server) = (vec![0u8; 16384], vec![0u8; 16384]);
    let mut last_active = Instant::now();
    loop {
        let now = *mode.borrow_and_update();
        match now {
            Mode::Refuse => {
                // A reset, as from a server that went away.
                let _ = inbound.set_zero_linger();
                let _ = outbound.set_zero_linger();
                return;
            }
            Mode::BlackHoleWhenIdle if last_active.elapsed() >= IDLE => {
                forgotten.lock().unwrap().push((inbound, outbound));
                return;
            }
            Mode::Hang => {
                // Nothing is read, so nothing is forwarded, until the mode
                // changes.
                if mode.changed().await.is_err() {
                    return;
                }
                continue;
            }
            Mode::Pass | Mode::BlackHoleWhenIdle => {}
        }
        tokio::select! {
            read = inbound.read(&mut from_client) => {
                let Ok(n @ 1..) = read else { return };
                last_active = Instant::now();
                if outbound.write_all(&from_client[..n]).await.is_err() {
                    return;
                }
            }
            read = outbound.read(&mut from_server) => {
                let Ok(n @ 1..) = read else { return };
                last_active = Instant::now();
                if inbound.write_all(&from_server[..n]).await.is_err() {
                    return;
                }
            }
            changed = mode.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            // Looks again at how long the connection has been idle.
            () = tokio::time::sleep(IDLE / 4) => {}
        }
    }
}
