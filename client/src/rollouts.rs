//! The operator's rollout calls: drift counts, and template rollouts
//! started, followed, paused, resumed and cancelled.

use std::future::Future;

use tonic::Streaming;
use tonic::transport::Channel;

use crate::operator::OperatorClient;
use crate::rollouts_client::RolloutsClient;
use crate::{
    CancelRolloutRequest, Error, GetDriftRequest, GetDriftResponse, GetRolloutRequest,
    ListRolloutsRequest, PauseRolloutRequest, ResumeRolloutRequest, Rollout, StartRolloutRequest,
    WatchRolloutRequest,
};

impl OperatorClient {
    /// As the other helpers, with the rollouts client.
    async fn on_rollouts<T, F, Fut>(&self, call: F) -> Result<T, Error>
    where
        F: FnOnce(RolloutsClient<Channel>) -> Fut,
        Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let (index, channel) = self.endpoints().pick();
        self.finish(index, call(RolloutsClient::new(channel)).await)
    }

    /// Drifted agents per gateway and board; empty ids mean any.
    ///
    /// # Errors
    ///
    /// [`Error::TokenRejected`] if the operator token is missing or wrong;
    /// [`Error::Status`] for any other refusal.
    pub async fn drift(&self, gateway_id: &str, board_id: &str) -> Result<GetDriftResponse, Error> {
        let request = self.request(GetDriftRequest {
            gateway_id: gateway_id.into(),
            board_id: board_id.into(),
        });
        self.on_rollouts(|mut client| async move { client.get_drift(request).await })
            .await
    }

    /// Starts a rollout and its first wave.
    ///
    /// # Errors
    ///
    /// [`Error::TokenRejected`] if the operator token is missing or wrong;
    /// [`Error::Status`] for any other refusal: `INVALID_ARGUMENT` for a bad
    /// version, limit or an empty selection, `NOT_FOUND` for an unknown
    /// gateway, board or agent, `FAILED_PRECONDITION` when some of the
    /// agents are already in an active rollout.
    pub async fn start_rollout(&self, request: StartRolloutRequest) -> Result<Rollout, Error> {
        let request = self.request(request);
        self.on_rollouts(|mut client| async move { client.start_rollout(request).await })
            .await
    }

    /// One rollout, with its counts per wave and its failed agents.
    ///
    /// # Errors
    ///
    /// As [`OperatorClient::start_rollout`]; `NOT_FOUND` for an unknown id.
    pub async fn rollout(&self, rollout_id: &str) -> Result<Rollout, Error> {
        let request = self.request(GetRolloutRequest {
            rollout_id: rollout_id.into(),
        });
        self.on_rollouts(|mut client| async move { client.get_rollout(request).await })
            .await
    }

    /// Every rollout, newest first.
    ///
    /// # Errors
    ///
    /// As [`OperatorClient::start_rollout`].
    pub async fn rollouts(&self) -> Result<Vec<Rollout>, Error> {
        let request = self.request(ListRolloutsRequest {});
        let reply = self
            .on_rollouts(|mut client| async move { client.list_rollouts(request).await })
            .await?;
        Ok(reply.rollouts)
    }

    /// Stops starting waves; agents in flight are still judged.
    ///
    /// # Errors
    ///
    /// As [`OperatorClient::start_rollout`]; `FAILED_PRECONDITION` for a
    /// rollout that is over.
    pub async fn pause_rollout(&self, rollout_id: &str) -> Result<Rollout, Error> {
        let request = self.request(PauseRolloutRequest {
            rollout_id: rollout_id.into(),
        });
        self.on_rollouts(|mut client| async move { client.pause_rollout(request).await })
            .await
    }

    /// Starts waves again; a non-empty `failure_budget` ("5", "10%")
    /// replaces the budget.
    ///
    /// # Errors
    ///
    /// As [`OperatorClient::pause_rollout`]; `FAILED_PRECONDITION` too while
    /// the failures exceed the budget.
    pub async fn resume_rollout(
        &self,
        rollout_id: &str,
        failure_budget: &str,
    ) -> Result<Rollout, Error> {
        let request = self.request(ResumeRolloutRequest {
            rollout_id: rollout_id.into(),
            failure_budget: failure_budget.into(),
        });
        self.on_rollouts(|mut client| async move { client.resume_rollout(request).await })
            .await
    }

    /// Ends the rollout; agents not started are left as they are.
    ///
    /// # Errors
    ///
    /// As [`OperatorClient::pause_rollout`].
    pub async fn cancel_rollout(&self, rollout_id: &str) -> Result<Rollout, Error> {
        let request = self.request(CancelRolloutRequest {
            rollout_id: rollout_id.into(),
        });
        self.on_rollouts(|mut client| async move { client.cancel_rollout(request).await })
            .await
    }

    /// The rollout now, then after every change, until it completes or is
    /// cancelled.
    ///
    /// # Errors
    ///
    /// As [`OperatorClient::rollout`]. Errors after the stream opened
    /// arrive as items of the stream.
    pub async fn watch_rollout(&self, rollout_id: &str) -> Result<Streaming<Rollout>, Error> {
        let request = self.request(WatchRolloutRequest {
            rollout_id: rollout_id.into(),
        });
        self.on_rollouts(|mut client| async move { client.watch_rollout(request).await })
            .await
    }
}
