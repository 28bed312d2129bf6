//! The `Rollouts` service: drift counts and template rollouts. Validate,
//! call the runtime, convert.

mod convert;
mod validate;

use std::pin::Pin;

use futures_util::{Stream, StreamExt};
use mission_control_proto::v1 as pb;
use mission_control_proto::v1::rollouts_server::Rollouts;
use tonic::{Request, Response, Status};

use super::validate::{board_id, gateway_id, optional};
use crate::engine::AgentFilter;
use crate::runtime::Lifecycle;

pub struct RolloutService {
    lifecycle: Lifecycle,
}

impl RolloutService {
    pub fn new(lifecycle: Lifecycle) -> Self {
        Self { lifecycle }
    }
}

type RolloutStream = Pin<Box<dyn Stream<Item = Result<pb::Rollout, Status>> + Send>>;

#[tonic::async_trait]
impl Rollouts for RolloutService {
    async fn get_drift(
        &self,
        request: Request<pb::GetDriftRequest>,
    ) -> Result<Response<pb::GetDriftResponse>, Status> {
        let request = request.get_ref();
        let filter = AgentFilter {
            gateway_id: optional(&request.gateway_id, |v| gateway_id("gateway_id", v))?,
            board_id: board_id(&request.board_id)?,
            ..AgentFilter::default()
        };
        let report = self.lifecycle.drift(&filter);
        Ok(Response::new(convert::drift(&report)))
    }

    async fn start_rollout(
        &self,
        request: Request<pb::StartRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let spec = validate::start(request.get_ref())?;
        let rollout = self.lifecycle.start_rollout(spec).await?;
        Ok(Response::new(convert::rollout(&rollout)))
    }

    async fn get_rollout(
        &self,
        request: Request<pb::GetRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let id = validate::rollout_id(&request.get_ref().rollout_id)?;
        let rollout = self.lifecycle.get_rollout(&id)?;
        Ok(Response::new(convert::rollout(&rollout)))
    }

    async fn list_rollouts(
        &self,
        _request: Request<pb::ListRolloutsRequest>,
    ) -> Result<Response<pb::ListRolloutsResponse>, Status> {
        let rollouts = self.lifecycle.list_rollouts();
        Ok(Response::new(pb::ListRolloutsResponse {
            rollouts: rollouts.iter().map(convert::rollout).collect(),
        }))
    }

    async fn pause_rollout(
        &self,
        request: Request<pb::PauseRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let id = validate::rollout_id(&request.get_ref().rollout_id)?;
        let rollout = self.lifecycle.pause_rollout(id).await?;
        Ok(Response::new(convert::rollout(&rollout)))
    }

    async fn resume_rollout(
        &self,
        request: Request<pb::ResumeRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let (id, budget) = validate::resume(request.get_ref())?;
        let rollout = self.lifecycle.resume_rollout(id, budget).await?;
        Ok(Response::new(convert::rollout(&rollout)))
    }

    async fn cancel_rollout(
        &self,
        request: Request<pb::CancelRolloutRequest>,
    ) -> Result<Response<pb::Rollout>, Status> {
        let id = validate::rollout_id(&request.get_ref().rollout_id)?;
        let rollout = self.lifecycle.cancel_rollout(id).await?;
        Ok(Response::new(convert::rollout(&rollout)))
    }

    type WatchRolloutStream = RolloutStream;

    async fn watch_rollout(
        &self,
        request: Request<pb::WatchRolloutRequest>,
    ) -> Result<Response<Self::WatchRolloutStream>, Status> {
        let id = validate::rollout_id(&request.get_ref().rollout_id)?;
        let stream = self.lifecycle.watch_rollout(&id)?;
        let stream = stream.map(|item| {
            item.map(|rollout| convert::rollout(&rollout))
                .map_err(Status::from)
        });
        Ok(Response::new(Box::pin(stream)))
    }
}
