//! [`CommandStore`]: commands to devices, kept durably from the moment they are accepted
//! until they reach a final state, with the vocabulary both backends share.
//!
//! A command has an id chosen by the caller and a sequence number the store assigns,
//! increasing per device (never reused, even after [`CommandStore::command_prune`]), so
//! a reconnecting device gets its open commands in the order they were created. Its
//! state moves `queued → sent → delivered → succeeded | failed | rejected | expired |
//! cancelled`; each move is a compare-and-set ([`CommandStore::command_transition`]) and
//! is stamped in [`Command::timestamps`].

use std::collections::BTreeMap;
use std::future::Future;

use telehub_core::DeviceId;

use crate::{StoreError, Timestamp};

/// How a command is delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandMode {
    /// Sent now if the device is connected, else failed.
    FireAndForget,
    /// Kept until delivered or expired, delivered in order.
    Queued,
    /// Only the newest command of a key is kept ([`CommandStore::command_insert`]
    /// cancels the older open ones).
    LatestWins,
}

impl CommandMode {
    /// The name stored in the database (and used by the API).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::FireAndForget => "fire_and_forget",
            Self::Queued => "queued",
            Self::LatestWins => "latest_wins",
        }
    }

    /// The mode named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "fire_and_forget" => Self::FireAndForget,
            "queued" => Self::Queued,
            "latest_wins" => Self::LatestWins,
            _ => return None,
        })
    }
}

/// Where a command is in its life. Ordered by the lifecycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandState {
    /// Accepted, not yet handed to the device.
    Queued,
    /// Handed to the device's connection, not yet acknowledged by it.
    Sent,
    /// The device has it.
    Delivered,
    /// The device carried it out.
    Succeeded,
    /// The device (or the hub) reported a failure.
    Failed,
    /// The device refused it.
    Rejected,
    /// Its time to live ran out before it was delivered.
    Expired,
    /// Cancelled by a user or superseded by a newer latest-wins command.
    Cancelled,
}

impl CommandState {
    /// Every state, in lifecycle order.
    pub const ALL: [CommandState; 8] = [
        Self::Queued,
        Self::Sent,
        Self::Delivered,
        Self::Succeeded,
        Self::Failed,
        Self::Rejected,
        Self::Expired,
        Self::Cancelled,
    ];

    /// The states that still wait for delivery: count against the per-device limit,
    /// are returned by [`CommandStore::command_pending`] and can expire.
    pub const OPEN: [CommandState; 2] = [Self::Queued, Self::Sent];

    /// The name stored in the database (and used by the API).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Queued => "queued",
            Self::Sent => "sent",
            Self::Delivered => "delivered",
            Self::Succeeded => "succeeded",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
            Self::Expired => "expired",
            Self::Cancelled => "cancelled",
        }
    }

    /// The state named `s`.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Queued or sent: not yet delivered.
    pub fn is_open(self) -> bool {
        Self::OPEN.contains(&self)
    }

    /// Succeeded, failed, rejected, expired or cancelled: nothing more will happen.
    pub fn is_final(self) -> bool {
        !matches!(self, Self::Queued | Self::Sent | Self::Delivered)
    }
}

/// A command to insert; the store gives it its sequence number and the state
/// [`CommandState::Queued`].
#[derive(Debug, Clone, PartialEq)]
pub struct NewCommand {
    /// Its id, unique among all commands (chosen by the caller).
    pub id: String,
    /// The device it is for.
    pub device: DeviceId,
    /// How it is delivered.
    pub mode: CommandMode,
    /// For latest-wins: what it sets (`heater`); only the newest command of a key stays
    /// open.
    pub key: Option<String>,
    /// What the device receives.
    pub payload: serde_json::Value,
    /// The topic it is published on, when not the device's default command topic.
    pub topic: Option<String>,
    /// When it was created (also the time of its `queued` stamp).
    pub created_at: Timestamp,
    /// When it expires if still open ([`CommandStore::command_expire`]).
    pub expires_at: Option<Timestamp>,
}

/// A stored command.
#[derive(Debug, Clone, PartialEq)]
pub struct Command {
    /// Its id.
    pub id: String,
    /// The device it is for.
    pub device: DeviceId,
    /// Its position among the device's commands: increasing, assigned at insert.
    pub seq: i64,
    /// How it is delivered.
    pub mode: CommandMode,
    /// Its latest-wins key, if any.
    pub key: Option<String>,
    /// What the device receives.
    pub payload: serde_json::Value,
    /// Its topic, when not the default.
    pub topic: Option<String>,
    /// Where it is now.
    pub state: CommandState,
    /// When it was created.
    pub created_at: Timestamp,
    /// When it expires if still open.
    pub expires_at: Option<Timestamp>,
    /// When its state last changed.
    pub updated_at: Timestamp,
    /// When it entered each state it has been in (the latest time, if it entered one
    /// twice).
    pub timestamps: BTreeMap<CommandState, Timestamp>,
    /// What the device reported with its outcome.
    pub result: Option<serde_json::Value>,
    /// Why it ended the way it did (`superseded`, `expired`, an error…).
    pub reason: Option<String>,
}

/// What [`CommandStore::command_insert`] did.
#[derive(Debug, Clone, PartialEq)]
#[expect(clippy::large_enum_variant, reason = "returned once per insert and matched at once, never stored")]
pub enum Inserted {
    /// Stored (committed) as `command`; `superseded` are the ids of the older open
    /// latest-wins commands of the same key that were cancelled in the same
    /// transaction, in sequence order.
    Accepted {
        /// The command as stored, with its sequence number.
        command: Command,
        /// Ids of the commands it cancelled.
        superseded: Vec<String>,
    },
    /// Refused: the device already has `open` commands queued or sent, the limit.
    /// Nothing was changed.
    QueueFull {
        /// How many open commands the device has.
        open: u64,
    },
    /// Refused: a command with this id exists. Nothing was changed.
    DuplicateId,
}

/// Commands of one device, newest first.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandQuery {
    /// The device.
    pub device: DeviceId,
    /// Only commands in one of these states (all states when empty).
    pub states: Vec<CommandState>,
    /// Only commands with a smaller sequence number (the next page).
    pub before_seq: Option<i64>,
    /// Page size.
    pub limit: usize,
}

/// Commands to devices.
///
/// Every method is safe to call from many tasks (and nodes) at once, and durable when
/// its future resolves `Ok`. Text and JSON holding U+0000 are refused with
/// [`StoreError::Backend`] on both backends (PostgreSQL cannot store it), except in a
/// `reason`, where it is replaced by U+FFFD.
pub trait CommandStore: Send + Sync + 'static {
    /// Inserts `cmd` in one transaction: for a latest-wins command with a key, first
    /// cancels (reason `superseded`) the device's open latest-wins commands of that key;
    /// then, if the device still has `max_queued_per_device` or more open commands,
    /// refuses with [`Inserted::QueueFull`] and changes nothing; else assigns the next
    /// sequence number of the device and stores the command as `queued`.
    fn command_insert(
        &self,
        cmd: NewCommand,
        max_queued_per_device: usize,
    ) -> impl Future<Output = Result<Inserted, StoreError>> + Send;

    /// The command with this id.
    fn command_get(&self, id: &str) -> impl Future<Output = Result<Option<Command>, StoreError>> + Send;

    /// A page of a device's commands, newest (greatest sequence number) first.
    fn command_list(
        &self,
        query: CommandQuery,
    ) -> impl Future<Output = Result<Vec<Command>, StoreError>> + Send;

    /// The device's open commands (queued, and sent but not delivered, so a reconnect
    /// sends those again), oldest first, at most `limit`. Does not look at
    /// `expires_at`: call [`CommandStore::command_expire`] first.
    fn command_pending(
        &self,
        device: &DeviceId,
        limit: usize,
    ) -> impl Future<Output = Result<Vec<Command>, StoreError>> + Send;

    /// Compare-and-set: if the command's state is one of `from`, moves it to `to` at
    /// `at` (stamped in [`Command::timestamps`], and `updated_at`), sets `result` and
    /// `reason` where given (keeps them where `None`) and returns the command as
    /// updated; `None` if there is no such command or its state is not in `from`.
    fn command_transition(
        &self,
        id: &str,
        from: &[CommandState],
        to: CommandState,
        result: Option<serde_json::Value>,
        reason: Option<String>,
        at: Timestamp,
    ) -> impl Future<Output = Result<Option<Command>, StoreError>> + Send;

    /// Moves every open command whose `expires_at <= now` to `expired` (reason
    /// `expired`) and returns them, ordered by `(device, seq)`.
    fn command_expire(&self, now: Timestamp)
    -> impl Future<Output = Result<Vec<Command>, StoreError>> + Send;

    /// Deletes the commands in a final state last updated before `before`; returns how
    /// many.
    fn command_prune(&self, before: Timestamp) -> impl Future<Output = Result<u64, StoreError>> + Send;
}

/// The columns every command query selects, in [`RawCommand`] order.
pub(crate) const COLUMNS: &str = "id, device, seq, mode, key, payload, topic, state, created_at, expires_at, updated_at, timestamps, \
     result, reason";

/// A command row as read, before its names are checked.
pub(crate) struct RawCommand {
    pub(crate) id: String,
    pub(crate) device: String,
    pub(crate) seq: i64,
    pub(crate) mode: String,
    pub(crate) key: Option<String>,
    pub(crate) payload: serde_json::Value,
    pub(crate) topic: Option<String>,
    pub(crate) state: String,
    pub(crate) created_at: i64,
    pub(crate) expires_at: Option<i64>,
    pub(crate) updated_at: i64,
    pub(crate) timestamps: serde_json::Value,
    pub(crate) result: Option<serde_json::Value>,
    pub(crate) reason: Option<String>,
}

impl RawCommand {
    pub(crate) fn into_command(self) -> Result<Command, StoreError> {
        let bad = |what: &str| StoreError::Backend(format!("stored command {:?}: {what}", self.id));
        let mode =
            CommandMode::parse(&self.mode).ok_or_else(|| bad(&format!("unknown mode {:?}", self.mode)))?;
        let state = CommandState::parse(&self.state)
            .ok_or_else(|| bad(&format!("unknown state {:?}", self.state)))?;
        let device =
            DeviceId::new(self.device.clone()).map_err(|e| bad(&format!("invalid device id: {e}")))?;
        let mut timestamps = BTreeMap::new();
        if let serde_json::Value::Object(map) = &self.timestamps {
            for (name, at) in map {
                let st = CommandState::parse(name).ok_or_else(|| bad(&format!("unknown state {name:?}")))?;
                let at = at.as_i64().ok_or_else(|| bad("a state timestamp is not an integer"))?;
                timestamps.insert(st, Timestamp(at));
            }
        }
        Ok(Command {
            id: self.id,
            device,
            seq: self.seq,
            mode,
            key: self.key,
            payload: self.payload,
            topic: self.topic,
            state,
            created_at: Timestamp(self.created_at),
            expires_at: self.expires_at.map(Timestamp),
            updated_at: Timestamp(self.updated_at),
            timestamps,
            result: self.result,
            reason: self.reason,
        })
    }
}

/// `cmd` as stored by an accepted insert with sequence number `seq`.
pub(crate) fn accepted(cmd: NewCommand, seq: i64) -> Command {
    Command {
        id: cmd.id,
        device: cmd.device,
        seq,
        mode: cmd.mode,
        key: cmd.key,
        payload: cmd.payload,
        topic: cmd.topic,
        state: CommandState::Queued,
        created_at: cmd.created_at,
        expires_at: cmd.expires_at,
        updated_at: cmd.created_at,
        timestamps: BTreeMap::from([(CommandState::Queued, cmd.created_at)]),
        result: None,
        reason: None,
    }
}

/// What an insert decided, before the command is built.
pub(crate) enum Decision {
    /// Stored with this sequence number, superseding these ids.
    Accepted(i64, Vec<String>),
    /// Refused: this many open commands.
    Full(u64),
    /// Refused: the id exists.
    Duplicate,
}

impl Decision {
    pub(crate) fn into_inserted(self, cmd: NewCommand) -> Inserted {
        match self {
            Decision::Accepted(seq, superseded) => {
                Inserted::Accepted { command: accepted(cmd, seq), superseded }
            }
            Decision::Full(open) => Inserted::QueueFull { open },
            Decision::Duplicate => Inserted::DuplicateId,
        }
    }
}

/// The stored `timestamps` document of a new command.
pub(crate) fn initial_timestamps(at: Timestamp) -> serde_json::Value {
    serde_json::json!({ CommandState::Queued.as_str(): at.0 })
}

/// The reason stored on a command cancelled by a newer latest-wins command.
pub(crate) const SUPERSEDED: &str = "superseded";

/// The reason stored on an expired command.
pub(crate) const EXPIRED: &str = "expired";

/// Refuses a new command holding U+0000 (see [`CommandStore`]).
pub(crate) fn refuse_nul(cmd: &NewCommand) -> Result<(), StoreError> {
    let bad = crate::registry::has_nul(&cmd.id)
        || cmd.key.as_deref().is_some_and(crate::registry::has_nul)
        || cmd.topic.as_deref().is_some_and(crate::registry::has_nul)
        || crate::registry::json_has_nul(&cmd.payload);
    if bad {
        return Err(StoreError::Backend("a command contains a NUL character".into()));
    }
    Ok(())
}

/// `s` with U+0000 replaced by U+FFFD, for free text (reasons, errors).
pub(crate) fn without_nul(s: String) -> String {
    if crate::registry::has_nul(&s) { s.replace('\0', "\u{fffd}") } else { s }
}

/// The state names of `states`, for `IN`/`ANY` lists.
pub(crate) fn names(states: &[CommandState]) -> Vec<String> {
    states.iter().map(|s| s.as_str().to_owned()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for st in CommandState::ALL {
            assert_eq!(CommandState::parse(st.as_str()), Some(st));
        }
        for m in [CommandMode::FireAndForget, CommandMode::Queued, CommandMode::LatestWins] {
            assert_eq!(CommandMode::parse(m.as_str()), Some(m));
        }
        assert_eq!(CommandState::parse("done"), None);
        assert!(CommandState::Sent.is_open() && !CommandState::Delivered.is_open());
        assert!(!CommandState::Delivered.is_final() && CommandState::Cancelled.is_final());
    }

    #[test]
    fn serde_names_match_stored_names() {
        for st in CommandState::ALL {
            assert_eq!(serde_json::to_value(st).unwrap(), serde_json::json!(st.as_str()));
        }
        assert_eq!(serde_json::to_value(CommandMode::LatestWins).unwrap(), serde_json::json!("latest_wins"));
    }
}
