//! The Raft port: authenticated, framed connections between cluster nodes.
//!
//! Any byte stream carries it (TCP between real nodes, turmoil's simulated TCP in the
//! deterministic simulation). A connection opens with a mutual challenge–response over the
//! cluster's shared secret (HMAC-SHA256), binding the cluster id and both node ids: a node
//! that does not hold the secret, a node of another cluster, or a connection meant for
//! another node id (an address now used by a wiped and re-added node) is refused before any
//! Raft message is read. Every frame after it carries a tag (HMAC-SHA256 under a key derived
//! from both challenges, over its direction, its counter and its bytes), so frames cannot be
//! injected, replayed, reordered or moved to another connection. Frames are not encrypted:
//! run the Raft port on a private network (docs/OPERATIONS.md).
//!
//! Layout: the client sends `THRAFT01`, the cluster id (16), its node id and the target's
//! (u64 BE each) and a 32-byte challenge; the server answers `THRAFT01`, its own challenge
//! and its proof; the client sends its proof. Then frames: payload length (u32 BE), the
//! payload (postcard), the first 16 bytes of the tag.

use std::future::Future;
use std::io;
use std::pin::Pin;

use hmac::{Hmac, Mac};
use rand::RngCore as _;
use sha2::Sha256;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::NodeId;

const MAGIC: &[u8; 8] = b"THRAFT01";
/// The largest frame either side accepts (a batch of entries or a snapshot chunk is smaller).
pub const MAX_FRAME: usize = 64 << 20;
const TAG: usize = 16;

/// A byte stream between two nodes.
pub trait Stream: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Sync + Unpin + 'static> Stream for T {}

/// A boxed future of a new stream.
pub type Connecting<'a> = Pin<Box<dyn Future<Output = io::Result<Box<dyn Stream>>> + Send + 'a>>;

/// Opens streams to peers' Raft addresses.
pub trait Connector: Send + Sync + 'static {
    /// A stream to `addr` (host:port).
    fn connect<'a>(&'a self, addr: &'a str) -> Connecting<'a>;
}

/// Plain TCP (`TCP_NODELAY`).
pub struct TcpConnector;

impl Connector for TcpConnector {
    fn connect<'a>(&'a self, addr: &'a str) -> Connecting<'a> {
        Box::pin(async move {
            let s = tokio::net::TcpStream::connect(addr).await?;
            s.set_nodelay(true)?;
            Ok(Box::new(s) as Box<dyn Stream>)
        })
    }
}

/// What both ends of every connection share: the cluster's id and secret.
#[derive(Clone)]
pub struct ClusterKey {
    /// The cluster's id (random at `theta cluster init`).
    pub cluster: [u8; 16],
    /// The shared secret (32 random bytes, a file on every node).
    pub secret: [u8; 32],
}

impl std::fmt::Debug for ClusterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The secret never reaches a log.
        f.debug_struct("ClusterKey").field("cluster", &self.cluster).finish_non_exhaustive()
    }
}

type HmacSha256 = Hmac<Sha256>;

fn mac(key: &[u8], parts: &[&[u8]]) -> HmacSha256 {
    let mut m = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    for p in parts {
        m.update(p);
    }
    m
}

fn refused(why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::PermissionDenied, format!("raft connection refused: {why}"))
}

/// An authenticated connection.
pub struct Conn {
    stream: Box<dyn Stream>,
    key: [u8; 32],
    /// 0 for frames the client sends, 1 for the server's.
    send_dir: u8,
    sent: u64,
    received: u64,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("sent", &self.sent).field("received", &self.received).finish_non_exhaustive()
    }
}

impl Conn {
    /// Opens a connection as node `from` to node `to` and authenticates both ends.
    pub async fn client(mut stream: Box<dyn Stream>, key: &ClusterKey, from: NodeId, to: NodeId) -> io::Result<Conn> {
        let mut nonce_c = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut nonce_c);
        let mut hello = Vec::with_capacity(72);
        hello.extend_from_slice(MAGIC);
        hello.extend_from_slice(&key.cluster);
        hello.extend_from_slice(&from.to_be_bytes());
        hello.extend_from_slice(&to.to_be_bytes());
        hello.extend_from_slice(&nonce_c);
        stream.write_all(&hello).await?;
        let mut answer = [0u8; 72];
        stream.read_exact(&mut answer).await?;
        if &answer[..8] != MAGIC {
            return Err(refused("the peer does not speak Theta's Raft protocol"));
        }
        let nonce_s: [u8; 32] = answer[8..40].try_into().expect("32 bytes");
        let ids = [from.to_be_bytes(), to.to_be_bytes()].concat();
        mac(&key.secret, &[b"theta/raft/server", &key.cluster, &ids, &nonce_c, &nonce_s])
            .verify_slice(&answer[40..72])
            .map_err(|_| refused("the peer does not hold this cluster's secret, or is not the node asked for"))?;
        let proof = mac(&key.secret, &[b"theta/raft/client", &key.cluster, &ids, &nonce_c, &nonce_s]).finalize();
        stream.write_all(&proof.into_bytes()).await?;
        stream.flush().await?;
        Ok(Conn::keyed(stream, key, &nonce_c, &nonce_s, 0))
    }

    /// Accepts a connection as node `me`: returns it with the peer's node id.
    pub async fn server(mut stream: Box<dyn Stream>, key: &ClusterKey, me: NodeId) -> io::Result<(Conn, NodeId)> {
        let mut hello = [0u8; 72];
        stream.read_exact(&mut hello).await?;
        if &hello[..8] != MAGIC {
            return Err(refused("not Theta's Raft protocol"));
        }
        if hello[8..24] != key.cluster {
            return Err(refused("another cluster's id"));
        }
        let from = u64::from_be_bytes(hello[24..32].try_into().expect("8 bytes"));
        let to = u64::from_be_bytes(hello[32..40].try_into().expect("8 bytes"));
        if to != me {
            return Err(refused(&format!("meant for node {to}, this is node {me}")));
        }
        let nonce_c: [u8; 32] = hello[40..72].try_into().expect("32 bytes");
        let mut nonce_s = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut nonce_s);
        let ids = [from.to_be_bytes(), to.to_be_bytes()].concat();
        let proof = mac(&key.secret, &[b"theta/raft/server", &key.cluster, &ids, &nonce_c, &nonce_s]).finalize();
        let mut answer = Vec::with_capacity(72);
        answer.extend_from_slice(MAGIC);
        answer.extend_from_slice(&nonce_s);
        answer.extend_from_slice(&proof.into_bytes());
        stream.write_all(&answer).await?;
        stream.flush().await?;
        let mut theirs = [0u8; 32];
        stream.read_exact(&mut theirs).await?;
        mac(&key.secret, &[b"theta/raft/client", &key.cluster, &ids, &nonce_c, &nonce_s])
            .verify_slice(&theirs)
            .map_err(|_| refused(&format!("node {from} does not hold this cluster's secret")))?;
        Ok((Conn::keyed(stream, key, &nonce_c, &nonce_s, 1), from))
    }

    fn keyed(stream: Box<dyn Stream>, key: &ClusterKey, nonce_c: &[u8], nonce_s: &[u8], send_dir: u8) -> Conn {
        let k = mac(&key.secret, &[b"theta/raft/key", nonce_c, nonce_s]).finalize().into_bytes();
        Conn { stream, key: k.into(), send_dir, sent: 0, received: 0 }
    }

    fn tag(&self, dir: u8, counter: u64, payload: &[u8]) -> HmacSha256 {
        mac(&self.key, &[&[dir], &counter.to_be_bytes(), payload])
    }

    /// Sends one frame.
    pub async fn send(&mut self, payload: &[u8]) -> io::Result<()> {
        if payload.len() > MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("raft frame of {} bytes", payload.len())));
        }
        let tag = self.tag(self.send_dir, self.sent, payload).finalize().into_bytes();
        self.sent += 1;
        let mut frame = Vec::with_capacity(4 + payload.len() + TAG);
        frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        frame.extend_from_slice(payload);
        frame.extend_from_slice(&tag[..TAG]);
        self.stream.write_all(&frame).await?;
        self.stream.flush().await
    }

    /// Receives one frame, checking its size before reading it and its tag before returning it.
    pub async fn recv(&mut self) -> io::Result<Vec<u8>> {
        let mut len = [0u8; 4];
        self.stream.read_exact(&mut len).await?;
        let len = u32::from_be_bytes(len) as usize;
        if len > MAX_FRAME {
            return Err(io::Error::new(io::ErrorKind::InvalidData, format!("raft frame of {len} bytes")));
        }
        let mut buf = vec![0u8; len + TAG];
        self.stream.read_exact(&mut buf).await?;
        let (payload, tag) = buf.split_at(len);
        self.tag(1 - self.send_dir, self.received, payload)
            .verify_truncated_left(tag)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "raft frame fails its authentication tag"))?;
        self.received += 1;
        buf.truncate(len);
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(secret: u8) -> ClusterKey {
        ClusterKey { cluster: [9; 16], secret: [secret; 32] }
    }

    /// Runs the handshake between a client (node 1 asking for `to`) and a server (node `me`).
    async fn pair(
        client_key: ClusterKey,
        server_key: ClusterKey,
        to: NodeId,
        me: NodeId,
    ) -> (io::Result<Conn>, io::Result<(Conn, NodeId)>) {
        let (a, b) = tokio::io::duplex(1 << 16);
        tokio::join!(Conn::client(Box::new(a), &client_key, 1, to), Conn::server(Box::new(b), &server_key, me))
    }

    #[tokio::test]
    async fn members_of_one_cluster_connect_and_exchange_frames() {
        let (c, s) = pair(key(1), key(1), 2, 2).await;
        let (mut c, (mut s, peer)) = (c.unwrap(), s.unwrap());
        assert_eq!(peer, 1);
        c.send(b"hello").await.unwrap();
        c.send(b"").await.unwrap();
        assert_eq!(s.recv().await.unwrap(), b"hello");
        assert_eq!(s.recv().await.unwrap(), b"");
        s.send(b"answer").await.unwrap();
        assert_eq!(c.recv().await.unwrap(), b"answer");
    }

    #[tokio::test]
    async fn a_node_without_the_secret_is_refused_both_ways() {
        // The client refuses a server that lacks the secret, before sending anything else.
        let (c, s) = pair(key(2), key(1), 2, 2).await;
        assert_eq!(c.expect_err("the client refuses").kind(), io::ErrorKind::PermissionDenied);
        assert!(s.is_err(), "and the server gets no connection");
        // The server refuses a client that lacks it (one that answers the challenge blindly).
        let (mut a, b) = tokio::io::duplex(1 << 16);
        let impostor = async {
            let mut hello = Vec::new();
            hello.extend_from_slice(MAGIC);
            hello.extend_from_slice(&[9; 16]);
            hello.extend_from_slice(&1u64.to_be_bytes());
            hello.extend_from_slice(&2u64.to_be_bytes());
            hello.extend_from_slice(&[0; 32]);
            a.write_all(&hello).await.unwrap();
            let mut answer = [0u8; 72];
            a.read_exact(&mut answer).await.unwrap();
            a.write_all(&[7; 32]).await.unwrap();
        };
        let k = key(1);
        let ((), s) = tokio::join!(impostor, Conn::server(Box::new(b), &k, 2));
        let e = s.expect_err("the server refuses");
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied);
        assert!(e.to_string().contains("node 1 does not hold this cluster's secret"), "{e}");
    }

    #[tokio::test]
    async fn another_cluster_or_another_node_id_is_refused() {
        let other = ClusterKey { cluster: [8; 16], secret: [1; 32] };
        let (_, s) = pair(other, key(1), 2, 2).await;
        assert!(s.unwrap_err().to_string().contains("another cluster"));
        // An address now used by a node with another id (a wiped node re-added under a new id).
        let (_, s) = pair(key(1), key(1), 2, 5).await;
        assert!(s.unwrap_err().to_string().contains("meant for node 2, this is node 5"));
    }

    #[tokio::test]
    async fn tampered_replayed_or_oversized_frames_are_refused() {
        // A frame whose bytes change on the way, past a relay that passes the handshake.
        let k = key(1);
        let (a, b) = tokio::io::duplex(1 << 16);
        let (m, d) = tokio::io::duplex(1 << 16);
        let (mut b_read, mut b_write) = tokio::io::split(b);
        let (mut m_read, mut m_write) = tokio::io::split(m);
        let up = async {
            // The hello, then (once the server answered) the client's proof.
            let mut hello = [0u8; 72];
            b_read.read_exact(&mut hello).await.unwrap();
            m_write.write_all(&hello).await.unwrap();
            let mut proof = [0u8; 32];
            b_read.read_exact(&mut proof).await.unwrap();
            m_write.write_all(&proof).await.unwrap();
            let mut frame = [0u8; 4 + 5 + TAG];
            b_read.read_exact(&mut frame).await.unwrap();
            frame[5] ^= 1;
            m_write.write_all(&frame).await.unwrap();
        };
        let down = async {
            let mut hs = [0u8; 72];
            m_read.read_exact(&mut hs).await.unwrap();
            b_write.write_all(&hs).await.unwrap();
        };
        let client = async {
            let mut c = Conn::client(Box::new(a), &k, 1, 2).await.unwrap();
            c.send(b"hello").await.unwrap();
            c
        };
        let server = async {
            let (mut s, _) = Conn::server(Box::new(d), &k, 2).await.unwrap();
            s.recv().await
        };
        let ((), (), _c, received) = tokio::join!(up, down, client, server);
        assert_eq!(received.expect_err("a tampered frame is refused").kind(), io::ErrorKind::InvalidData);

        // A length beyond the limit is refused before anything is read.
        let (c, s) = pair(key(1), key(1), 2, 2).await;
        let (mut c, (mut s, _)) = (c.unwrap(), s.unwrap());
        c.stream.write_all(&(MAX_FRAME as u32 + 1).to_be_bytes()).await.unwrap();
        assert!(s.recv().await.unwrap_err().to_string().contains("raft frame of"));
        // A frame sent again (same bytes, same tag) fails: the counter moved on.
        let (c, s) = pair(key(1), key(1), 2, 2).await;
        let (mut c, (mut s, _)) = (c.unwrap(), s.unwrap());
        let tag = c.tag(0, 0, b"x").finalize().into_bytes();
        let mut frame = vec![0, 0, 0, 1, b'x'];
        frame.extend_from_slice(&tag[..TAG]);
        c.stream.write_all(&frame).await.unwrap();
        c.stream.write_all(&frame).await.unwrap();
        assert_eq!(s.recv().await.unwrap(), b"x");
        assert_eq!(s.recv().await.unwrap_err().kind(), io::ErrorKind::InvalidData);
    }
}
