//! Every unary and server-streaming gRPC request type, decoded from arbitrary bytes as tonic
//! would and handled by the real services over an in-memory store holding one session, with
//! and without a credential (arbitrary metadata bytes), on a server that wants credentials
//! and on one that serves reads publicly. A handler may refuse with any status; it must not
//! panic, and a stream must end or wait.
//!
//! Input: pieces (see `theta_fuzz::pieces`): a selector (method; the high bit picks the public
//! server), the protobuf request, the credential metadata value.
#![no_main]

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use prost::Message;
use theta_gateway::auth::{Access, AccessConfig};
use theta_gateway::grpc::Gateway;
use theta_gateway::metrics::Observability;
use theta_proto::v1::admin_service_server::AdminService;
use theta_proto::v1::audit_service_server::AuditService;
use theta_proto::v1::log_service_server::LogService;
use theta_proto::v1::replay_service_server::ReplayService;
use theta_schemas::credential::CREDENTIAL_METADATA;
use theta_schemas::{Command, ComponentId, SessionId, Shape};
use theta_store::{Store, StoreConfig};
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status};

struct World {
    rt: tokio::runtime::Runtime,
    /// Wants credentials; serves reads publicly.
    gateways: [Gateway; 2],
    _closing: tokio::sync::watch::Sender<bool>,
}

fn world() -> &'static World {
    static WORLD: OnceLock<World> = OnceLock::new();
    WORLD.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let config = StoreConfig { rate_per_sec: 1e9, rate_burst: 1e9, ..StoreConfig::default() };
        let store = Arc::new(Store::open_in_memory(config));
        let s = SessionId([1; 16]);
        let mut owner = theta_testkit::Author::new(1);
        let create = Command::CreateSession { name: "fuzz".into() };
        store.append(&owner.cmd(s, 0, ComponentId::NONE, 0, create)).expect("session");
        for e in 1..=3 {
            let c = Command::CreateEntity { shape: Shape::Cube, name: format!("e{e}"), parent: 0 };
            store.append(&owner.cmd(s, e, ComponentId::NONE, 0, c)).expect("entity");
        }
        let (closing_tx, closing) = tokio::sync::watch::channel(false);
        let gateway = |public_read: bool| {
            let access = AccessConfig {
                public_read,
                reads_per_sec: 1e9,
                reads_burst: 1e9,
                max_streams_per_key: 1 << 20,
                ..AccessConfig::default()
            };
            let obs = Arc::new(Observability::default());
            let access = Arc::new(Access::new(access));
            obs.attach_access(access.clone());
            let _guard = rt.enter();
            Gateway::new(store.clone(), obs, closing.clone(), Duration::from_millis(50), access)
        };
        let gateways = [gateway(false), gateway(true)];
        World { rt, gateways, _closing: closing_tx }
    })
}

fn request<T: Message + Default>(bytes: &[u8], credential: Option<&[u8]>) -> Option<Request<T>> {
    let mut req = Request::new(T::decode(bytes).ok()?);
    if let Some(value) = credential.and_then(|c| std::str::from_utf8(c).ok()).and_then(|c| c.parse().ok()) {
        req.metadata_mut().insert(CREDENTIAL_METADATA, value);
    }
    Some(req)
}

/// Reads a streamed answer until it ends or waits (a subscription waits for new commits).
async fn drain<T, S: tokio_stream::Stream<Item = Result<T, Status>> + Unpin>(r: Result<Response<S>, Status>) {
    let Ok(r) = r else { return };
    let mut stream = r.into_inner();
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(20), stream.next()).await {}
}

fuzz_target!(|data: &[u8]| {
    let mut pieces = theta_fuzz::pieces(data);
    let (Some(selector), Some(body)) = (pieces.next(), pieces.next()) else { return };
    let Some(&selector) = selector.first() else { return };
    let credential = pieces.next();
    let w = world();
    let g = &w.gateways[usize::from(selector >> 7)];
    macro_rules! unary {
        ($method:path) => {
            if let Some(req) = request(body, credential) {
                let _ = w.rt.block_on($method(g, req));
            }
        };
    }
    macro_rules! stream {
        ($method:path) => {
            if let Some(req) = request(body, credential) {
                w.rt.block_on(async { drain($method(g, req).await).await });
            }
        };
    }
    match selector & 0x7f {
        0 => unary!(LogService::append),
        1 => unary!(LogService::create_session),
        2 => unary!(LogService::head),
        3 => stream!(ReplayService::read_log),
        4 => stream!(ReplayService::read_state),
        5 => stream!(ReplayService::subscribe),
        6 => stream!(ReplayService::entity_history),
        7 => unary!(AuditService::verify_log),
        8 => unary!(AuditService::inclusion_proof),
        9 => unary!(AuditService::consistency_proof),
        10 => unary!(AuditService::signed_tree_head),
        11 => unary!(AuditService::rejections),
        12 => unary!(AuditService::author_summary),
        13 => unary!(AdminService::stats),
        _ => {}
    }
});
