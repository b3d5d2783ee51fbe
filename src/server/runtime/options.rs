//! The runtime's options (beside the core's) and their one `validate`, which checks both together.

use super::*;

/// Tunables of the shell.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub core: Options,
    /// How often the core's timers are checked.
    pub tick: Duration,
    /// How long a client's Propose may wait for its command to execute.
    pub propose_timeout: Duration,
    /// Capacity of bigChannel, in events.
    pub big_channel_max: usize,
    /// bigChannel's capacity in bytes (client commands and peer message batches).
    pub big_channel_bytes_max: usize,
    /// Capacity of each peer's outbound queue, in messages.
    pub peer_queue_max: usize,
    /// Capacity of each peer's outbound queue, in bytes.
    pub peer_queue_bytes_max: usize,
    /// Most bytes of client request bodies held at once (all client connections).
    pub request_bytes_max: usize,
    /// Most client connections held at once.
    pub client_connections_max: usize,
    /// Where the durable log lives.
    pub data_dir: std::path::PathBuf,
    /// Whether the log is synced before messages that depend on it leave.
    pub sync: Sync,
    /// Checkpoint (and cut the log) each time this many more instances were dropped from
    /// memory (executed here, committed everywhere).
    pub checkpoint_every: u64,
    /// Plaintext listeners and peer links, no authentication (`--insecure`).
    pub insecure: bool,
}

/// Invalid [`RuntimeOptions`].
#[derive(Debug, thiserror::Error)]
pub enum RuntimeOptionsError {
    #[error(transparent)]
    Core(#[from] crate::core::replica::OptionsError),
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("the tick and the propose timeout must be positive")]
    Timers,
    #[error("the drain limit ({DRAIN_MAX}) exceeds bigChannel's capacity ({0})")]
    BigChannel(usize),
    #[error("{name} is {value} bytes; it must be between {min} (the largest {what}) and {max}")]
    Bytes {
        name: &'static str,
        value: usize,
        min: usize,
        max: usize,
        what: &'static str,
    },
}

impl RuntimeOptions {
    /// Checks the shell's options and the core's, and the relations between them.
    pub fn validate(&self) -> Result<(), RuntimeOptionsError> {
        self.core.validate()?;
        for (name, v) in [
            ("checkpoint_every", self.checkpoint_every as usize),
            ("big_channel_max", self.big_channel_max),
            ("peer_queue_max", self.peer_queue_max),
            ("client_connections_max", self.client_connections_max),
        ] {
            if v == 0 {
                return Err(RuntimeOptionsError::Zero(name));
            }
        }
        if self.tick.is_zero() || self.propose_timeout.is_zero() {
            return Err(RuntimeOptionsError::Timers);
        }
        if self.big_channel_max < DRAIN_MAX {
            return Err(RuntimeOptionsError::BigChannel(self.big_channel_max));
        }
        // Each byte budget admits at least one item of the largest size (or nothing of that
        // size would ever pass), and the semaphores count in u32.
        let u32_max = u32::MAX as usize;
        for (name, value, min, what) in [
            (
                "big_channel_bytes_max",
                self.big_channel_bytes_max,
                limits::COMMAND_BYTES_MAX,
                "command",
            ),
            (
                "pending_bytes_max",
                self.core.pending_bytes_max,
                limits::COMMAND_BYTES_MAX,
                "command",
            ),
            (
                "request_bytes_max",
                self.request_bytes_max,
                limits::CLIENT_GRPC_MESSAGE_BYTES_MAX,
                "client request",
            ),
            (
                "peer_queue_bytes_max",
                self.peer_queue_bytes_max,
                limits::MESSAGE_BYTES_MAX,
                "peer message",
            ),
        ] {
            if value < min || value > u32_max {
                return Err(RuntimeOptionsError::Bytes {
                    name,
                    value,
                    min,
                    max: u32_max,
                    what,
                });
            }
        }
        Ok(())
    }

    pub fn new(core: Options) -> Self {
        RuntimeOptions {
            core,
            tick: limits::TICK,
            propose_timeout: limits::PROPOSE_TIMEOUT,
            big_channel_max: limits::BIG_CHANNEL_MAX,
            big_channel_bytes_max: limits::BIG_CHANNEL_BYTES_MAX,
            peer_queue_max: limits::PEER_QUEUE_MAX,
            peer_queue_bytes_max: limits::PEER_QUEUE_BYTES_MAX,
            request_bytes_max: limits::CLIENT_REQUEST_BYTES_MAX,
            client_connections_max: limits::CLIENT_CONNECTIONS_MAX,
            data_dir: std::path::PathBuf::from("data"),
            sync: Sync::Fsync,
            checkpoint_every: limits::CHECKPOINT_EVERY,
            insecure: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_validated_together_with_the_core_s() {
        let ok = RuntimeOptions::new(Options::new(ReplicaId(0), 3));
        assert!(ok.validate().is_ok(), "the defaults are valid");
        let mut o = ok.clone();
        o.checkpoint_every = 0;
        assert!(matches!(
            o.validate(),
            Err(RuntimeOptionsError::Zero("checkpoint_every"))
        ));
        let mut o = ok.clone();
        o.big_channel_max = DRAIN_MAX - 1;
        assert!(matches!(
            o.validate(),
            Err(RuntimeOptionsError::BigChannel(_))
        ));
        let mut o = ok.clone();
        o.core.batch_max = 0;
        assert!(matches!(o.validate(), Err(RuntimeOptionsError::Core(_))));
        let mut o = ok.clone();
        o.propose_timeout = Duration::ZERO;
        assert!(matches!(o.validate(), Err(RuntimeOptionsError::Timers)));
        // Each byte budget admits one item of the largest size and fits a u32 semaphore.
        let mut o = ok.clone();
        o.request_bytes_max = limits::CLIENT_GRPC_MESSAGE_BYTES_MAX - 1;
        assert!(matches!(
            o.validate(),
            Err(RuntimeOptionsError::Bytes {
                name: "request_bytes_max",
                ..
            })
        ));
        let mut o = ok.clone();
        o.core.pending_bytes_max = limits::COMMAND_BYTES_MAX - 1;
        assert!(matches!(
            o.validate(),
            Err(RuntimeOptionsError::Bytes {
                name: "pending_bytes_max",
                ..
            })
        ));
        let mut o = ok.clone();
        o.peer_queue_bytes_max = limits::MESSAGE_BYTES_MAX - 1;
        assert!(o.validate().is_err());
        let mut o = ok;
        o.big_channel_bytes_max = u32::MAX as usize + 1;
        assert!(o.validate().is_err());
    }
}
