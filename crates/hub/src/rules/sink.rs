//! [`ServiceSink`]: a rule's `command` actions go through the command service (its
//! mode, key and ttl apply, the command is stored and tracked like one made through the
//! API) and its `webhook` actions into the webhook outbox (signed, retried, dead-lettered
//! like every other delivery).

use telehub_store::OutboxStore;
use telehub_store::commands::{CommandMode as StoredMode, CommandState};

use super::CommandMode;
use super::service::{ActionError, ActionSink, BoxFuture, CommandCall, ControlSink, WebhookCall};
use crate::commands::{CommandBackend, CommandError, Commands, Request};
use crate::timestamp::to_rfc3339;
use crate::webhooks::Webhooks;

/// Event type of a delivery a rule's `webhook` action makes.
pub const RULE_WEBHOOK_EVENT: &str = "rule.fired";

/// The app's [`ActionSink`]. A command for a device the registry does not know (possible
/// only with anonymous access) cannot be stored: it is published straight to the device's
/// command topic, as [`ControlSink`] does, marked with the rule's user property.
pub struct ServiceSink<S> {
    commands: Commands<S>,
    webhooks: Webhooks<S>,
    direct: ControlSink,
}

impl<S> ServiceSink<S> {
    /// Commands through `commands`, webhook calls through `webhooks`, commands for
    /// unregistered devices through `direct`.
    pub fn new(commands: Commands<S>, webhooks: Webhooks<S>, direct: ControlSink) -> Self {
        Self { commands, webhooks, direct }
    }
}

impl<S> ActionSink for ServiceSink<S>
where
    S: CommandBackend + OutboxStore + Send + Sync + 'static,
{
    fn command(&self, call: CommandCall) -> BoxFuture<'_, Result<(), ActionError>> {
        Box::pin(async move {
            if let Err(CommandError::UnknownDevice(_)) = self.commands.check_device(&call.device) {
                return self.direct.command(call).await;
            }
            let request = Request {
                payload: call.payload,
                mode: match call.mode {
                    CommandMode::FireAndForget => StoredMode::FireAndForget,
                    CommandMode::Queued => StoredMode::Queued,
                    CommandMode::LatestWins => StoredMode::LatestWins,
                },
                key: call.key,
                ttl: call.ttl,
                topic: call.topic.map(|t| t.as_str().to_owned()),
            };
            let cmd = self
                .commands
                .create(&call.device, request)
                .await
                .map_err(|e| ActionError::Failed(format!("command for {}: {e}", call.device)))?;
            tracing::debug!(rule = call.rule, device = %call.device, command = cmd.id, state = cmd.state.as_str(), "rule command created");
            if cmd.state == CommandState::Failed {
                let reason = cmd.reason.as_deref().unwrap_or("failed");
                return Err(ActionError::Failed(format!("command {} for {}: {reason}", cmd.id, call.device)));
            }
            Ok(())
        })
    }

    fn webhook(&self, call: WebhookCall) -> BoxFuture<'_, Result<(), ActionError>> {
        Box::pin(async move {
            let data = call.payload.unwrap_or_else(|| {
                serde_json::json!({
                    "rule": call.rule,
                    "device": call.device.as_ref().map(|d| d.as_str()),
                    "fired_at": to_rfc3339(call.at),
                })
            });
            let delivery = self
                .webhooks
                .call(&call.webhook, RULE_WEBHOOK_EVENT, data)
                .await
                .map_err(|e| ActionError::Failed(format!("webhook {}: {e}", call.webhook)))?;
            tracing::debug!(
                rule = call.rule,
                webhook = call.webhook,
                delivery,
                "rule webhook delivery queued"
            );
            Ok(())
        })
    }
}
