//! `AdminService`: server statistics.

use super::*;

#[tonic::async_trait]
impl AdminService for Gateway {
    async fn stats(&self, req: Request<pb::StatsRequest>) -> Result<Response<pb::StatsResponse>, Status> {
        let _t = self.obs.call("Stats");
        self.authorize(&req, "/theta.v1.AdminService/Stats", None, Need::Admin, false)?;
        let counters =
            self.obs.counters(&self.store).into_iter().map(|(name, value)| pb::Counter { name, value }).collect();
        Ok(Response::new(pb::StatsResponse {
            counters,
            sessions: self
                .store
                .sessions()
                .into_iter()
                .map(|h| pb::SessionStats { session: h.session.0.to_vec(), name: h.name, seq: h.seq })
                .collect(),
            service_public_key: self.store.service_public_key().to_vec(),
        }))
    }
}
