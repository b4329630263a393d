//! `LogService`: session creation, appends (unary and streaming) and the head.

use super::*;

#[tonic::async_trait]
impl LogService for Gateway {
    async fn create_session(&self, req: Request<pb::AppendRequest>) -> Result<Response<pb::AppendResponse>, Status> {
        let _t = self.obs.call("CreateSession");
        let envelope = req.into_inner().envelope;
        match Envelope::open(&envelope) {
            Ok((_, body)) if body.command.kind() != CommandKind::CreateSession => {
                return Err(bad_field(
                    "envelope",
                    &format!("CreateSession expects a CreateSession command, got {}", body.command.kind()),
                ));
            }
            _ => {}
        }
        let r = self.append_one(envelope).await.map_err(|e| append_status(&e))?;
        Ok(Response::new(pb::AppendResponse { receipt: Some(convert::receipt(&r)) }))
    }

    async fn append(&self, req: Request<pb::AppendRequest>) -> Result<Response<pb::AppendResponse>, Status> {
        let _t = self.obs.call("Append");
        let r = self.append_one(req.into_inner().envelope).await.map_err(|e| append_status(&e))?;
        Ok(Response::new(pb::AppendResponse { receipt: Some(convert::receipt(&r)) }))
    }

    type AppendStreamStream = BoxStream<pb::AppendStreamResponse>;

    async fn append_stream(
        &self,
        req: Request<Streaming<pb::AppendRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let _t = self.obs.call("AppendStream");
        let mut incoming = req.into_inner();
        let (pending_tx, mut pending_rx) =
            mpsc::channel::<oneshot::Receiver<Result<Receipt, AppendError>>>(STREAM_IN_FLIGHT);
        let (out_tx, out_rx) = mpsc::channel(STREAM_IN_FLIGHT);
        let gw = self.clone();
        let err_tx = out_tx.clone();
        // Reader: submit each request as it arrives (pipelined, bounded by STREAM_IN_FLIGHT).
        tokio::spawn(async move {
            loop {
                match incoming.message().await {
                    Ok(Some(m)) => {
                        if pending_tx.send(gw.submit(m.envelope)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        let _ = err_tx.send(Err(status)).await;
                        break;
                    }
                }
            }
        });
        // Writer: answer in request order.
        tokio::spawn(async move {
            let mut index = 0u64;
            while let Some(rx) = pending_rx.recv().await {
                let result = match rx.await.unwrap_or(Err(AppendError::ShuttingDown)) {
                    Ok(r) => pb::append_stream_response::Result::Receipt(convert::receipt(&r)),
                    Err(e) => pb::append_stream_response::Result::Rejection(pb::Rejection {
                        grpc_code: append_code(&e) as u32,
                        reason_code: e.code() as u32,
                        counter: e.code().counter().to_string(),
                        message: e.to_string(),
                    }),
                };
                if out_tx.send(Ok(pb::AppendStreamResponse { index, result: Some(result) })).await.is_err() {
                    break;
                }
                index += 1;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    async fn head(&self, req: Request<pb::HeadRequest>) -> Result<Response<pb::HeadResponse>, Status> {
        let _t = self.obs.call("Head");
        let s = convert::session(&req.get_ref().session)?;
        self.authorize(&req, "/theta.v1.LogService/Head", Some(&s), Need::Member, false)?;
        let h = self.store.head(&s).map_err(|e| read_status(&e))?;
        Ok(Response::new(convert::head(&h)))
    }
}
