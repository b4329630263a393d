//! `AuditService`: re-verification of a log range, inclusion and consistency proofs, signed tree
//! heads, the rejection trail and author summaries.

use super::*;

/// Re-verifies entries `from..=to`: signatures, chain links and hashes, and the tree.
pub fn verify_log(store: &Store, s: &SessionId, from: u64, to: u64) -> Result<pb::VerifyLogResponse, Status> {
    let head = store.head(s).map_err(|e| read_status(&e))?;
    let to = if to == 0 { head.seq } else { to };
    if to > head.seq {
        return Err(Status::out_of_range(format!("to_seq {to} is beyond the head {}", head.seq)));
    }
    let from = from.max(1);
    let mut report = pb::VerifyLogResponse {
        signatures_ok: true,
        chain_ok: true,
        tree_ok: true,
        tree_size: to,
        tree_root: store.tree_root(s, to).map_err(|e| read_status(&e))?.to_vec(),
        ..Default::default()
    };
    let bad = |report: &mut pb::VerifyLogResponse, seq: u64, why: String| {
        if report.first_bad_seq == 0 {
            report.first_bad_seq = seq;
            report.first_bad_reason = why;
        }
    };
    let mut prev =
        if from == 1 { [0u8; 32] } else { store.entry(s, from - 1).map_err(|e| read_status(&e))?.entry_hash };
    let mut frontier = (from == 1).then(Frontier::new);
    for e in store.read_range(s, from, to).map_err(|e| read_status(&e))? {
        let e = e.map_err(|e| read_status(&e))?;
        report.entries_checked += 1;
        let recomputed = merkle::entry_hash(s, e.seq, e.receipt_time_ms, &e.prev_hash, &e.envelope);
        if e.prev_hash != prev || recomputed != e.entry_hash {
            report.chain_ok = false;
            bad(&mut report, e.seq, "hash chain broken".into());
        }
        match Envelope::open(&e.envelope) {
            Ok((env, body)) => {
                let ok = verifying_key(&body.author).and_then(|k| verify_command(&k, &env.body, &env.signature));
                if let Err(err) = ok {
                    report.signatures_ok = false;
                    bad(&mut report, e.seq, format!("signature: {err}"));
                }
            }
            Err(err) => {
                report.signatures_ok = false;
                bad(&mut report, e.seq, format!("envelope: {err}"));
            }
        }
        if let Some(f) = frontier.as_mut() {
            f.push(merkle::leaf_hash(&e.entry_hash), |_, _, _| {});
        }
        prev = e.entry_hash;
    }
    match frontier {
        Some(f) if f.root()[..] != report.tree_root[..] => {
            report.tree_ok = false;
            bad(&mut report, to, "Merkle root differs from the entries".into());
        }
        Some(_) => {}
        None => {
            // Not from the start: prove the first and last entries against the root instead.
            for seq in [from, to] {
                let p = store.inclusion_proof(s, seq, to).map_err(|e| read_status(&e))?;
                let leaf = merkle::leaf_hash(&store.entry(s, seq).map_err(|e| read_status(&e))?.entry_hash);
                if leaf != p.leaf_hash || !p.verify() {
                    report.tree_ok = false;
                    bad(&mut report, seq, "inclusion proof fails".into());
                }
            }
        }
    }
    Ok(report)
}

/// Per-author activity and grants, from the whole log.
pub fn author_summary(store: &Store, s: &SessionId) -> Result<pb::AuthorSummaryResponse, Status> {
    #[derive(Default)]
    struct Acc {
        role: Option<(Role, u64)>,
        entries: u64,
        first: u64,
        last: u64,
        kinds: BTreeMap<&'static str, u64>,
    }
    let mut by: BTreeMap<theta_schemas::AuthorKey, Acc> = BTreeMap::new();
    for e in store.read_range(s, 1, u64::MAX).map_err(|e| read_status(&e))? {
        let e = e.map_err(|e| read_status(&e))?;
        let Ok((_, body)) = Envelope::open(&e.envelope) else { continue };
        let a = by.entry(body.author).or_default();
        a.entries += 1;
        if a.first == 0 {
            a.first = e.seq;
        }
        a.last = e.seq;
        *a.kinds.entry(body.command.kind().name()).or_default() += 1;
        match body.command {
            Command::CreateSession { .. } => a.role = Some((Role::Owner, e.seq)),
            Command::GrantRole { key, role } => by.entry(key).or_default().role = Some((role, e.seq)),
            Command::RevokeRole { key } => by.entry(key).or_default().role = None,
            _ => {}
        }
    }
    Ok(pb::AuthorSummaryResponse {
        authors: by
            .into_iter()
            .map(|(k, a)| pb::AuthorActivity {
                author: k.0.to_vec(),
                role: a.role.map_or(Role::None, |r| r.0).name().to_string(),
                granted_at_seq: a.role.map_or(0, |r| r.1),
                entries: a.entries,
                first_seq: a.first,
                last_seq: a.last,
                kinds: a.kinds.into_iter().map(|(k, n)| pb::KindCount { kind: k.to_string(), count: n }).collect(),
            })
            .collect(),
    })
}

#[tonic::async_trait]
impl AuditService for Gateway {
    async fn verify_log(&self, req: Request<pb::VerifyLogRequest>) -> Result<Response<pb::VerifyLogResponse>, Status> {
        let _t = self.obs.call("VerifyLog");
        let s = convert::session(&req.get_ref().session)?;
        self.authorize(&req, "/theta.v1.AuditService/VerifyLog", Some(&s), Need::Auditor, false)?;
        let r = req.into_inner();
        let store = self.store.clone();
        Ok(Response::new(blocking(move || verify_log(&store, &s, r.from_seq, r.to_seq)).await?))
    }

    async fn inclusion_proof(
        &self,
        req: Request<pb::InclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProofResponse>, Status> {
        let _t = self.obs.call("InclusionProof");
        let s = convert::session(&req.get_ref().session)?;
        self.authorize(&req, "/theta.v1.AuditService/InclusionProof", Some(&s), Need::Auditor, false)?;
        let r = req.into_inner();
        let size = if r.tree_size == 0 { self.store.head(&s).map_err(|e| read_status(&e))?.seq } else { r.tree_size };
        let p = self.store.inclusion_proof(&s, r.seq, size).map_err(|e| read_status(&e))?;
        Ok(Response::new(pb::InclusionProofResponse {
            seq: p.seq,
            leaf_index: p.seq - 1,
            tree_size: p.tree_size,
            leaf_hash: p.leaf_hash.to_vec(),
            path: p.path.iter().map(|h| h.to_vec()).collect(),
            root: p.root.to_vec(),
        }))
    }

    async fn consistency_proof(
        &self,
        req: Request<pb::ConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProofResponse>, Status> {
        let _t = self.obs.call("ConsistencyProof");
        let s = convert::session(&req.get_ref().session)?;
        self.authorize(&req, "/theta.v1.AuditService/ConsistencyProof", Some(&s), Need::Auditor, false)?;
        let r = req.into_inner();
        let new = if r.new_size == 0 { self.store.head(&s).map_err(|e| read_status(&e))?.seq } else { r.new_size };
        let proof = self.store.consistency_proof(&s, r.old_size, new).map_err(|e| read_status(&e))?;
        Ok(Response::new(pb::ConsistencyProofResponse {
            old_size: r.old_size,
            new_size: new,
            old_root: self.store.tree_root(&s, r.old_size).map_err(|e| read_status(&e))?.to_vec(),
            new_root: self.store.tree_root(&s, new).map_err(|e| read_status(&e))?.to_vec(),
            proof: proof.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn signed_tree_head(
        &self,
        req: Request<pb::SignedTreeHeadRequest>,
    ) -> Result<Response<pb::SignedTreeHeadResponse>, Status> {
        let _t = self.obs.call("SignedTreeHead");
        let s = convert::session(&req.get_ref().session)?;
        self.authorize(&req, "/theta.v1.AuditService/SignedTreeHead", Some(&s), Need::Member, false)?;
        let h = self.store.signed_tree_head(&s).map_err(|e| read_status(&e))?;
        Ok(Response::new(pb::SignedTreeHeadResponse {
            session: h.session.0.to_vec(),
            tree_size: h.tree_size,
            root: h.root.to_vec(),
            timestamp_ms: h.timestamp_ms,
            signature: h.signature.to_vec(),
            public_key: h.public_key.to_vec(),
        }))
    }

    async fn rejections(
        &self,
        req: Request<pb::RejectionsRequest>,
    ) -> Result<Response<pb::RejectionsResponse>, Status> {
        let _t = self.obs.call("Rejections");
        let s = if req.get_ref().session.is_empty() { None } else { Some(convert::session(&req.get_ref().session)?) };
        let need = if s.is_some() { Need::Auditor } else { Need::Admin };
        self.authorize(&req, "/theta.v1.AuditService/Rejections", s.as_ref(), need, false)?;
        let records = self.store.rejections(s.as_ref()).map_err(|e| read_status(&e))?;
        Ok(Response::new(pb::RejectionsResponse {
            records: records
                .into_iter()
                .map(|r| pb::RejectionRecord {
                    index: r.index,
                    time_ms: r.time_ms,
                    reason_code: r.code as u32,
                    counter: r.code.counter().to_string(),
                    author: r.author.map(|a| a.0.to_vec()).unwrap_or_default(),
                    envelope_hash: r.envelope_hash.to_vec(),
                    reason: r.reason,
                })
                .collect(),
        }))
    }

    async fn author_summary(
        &self,
        req: Request<pb::AuthorSummaryRequest>,
    ) -> Result<Response<pb::AuthorSummaryResponse>, Status> {
        let _t = self.obs.call("AuthorSummary");
        let s = convert::session(&req.get_ref().session)?;
        self.authorize(&req, "/theta.v1.AuditService/AuthorSummary", Some(&s), Need::Auditor, false)?;
        let store = self.store.clone();
        Ok(Response::new(blocking(move || author_summary(&store, &s)).await?))
    }
}
