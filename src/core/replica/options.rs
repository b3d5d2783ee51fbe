//! The core's tunables and the test-only sabotage switches.

use std::time::Duration;

use crate::core::ids::ReplicaId;
use crate::core::limits;

/// Tunables, validated at start.
#[derive(Debug, Clone)]
pub struct Options {
    pub id: ReplicaId,
    pub n: usize,
    /// Send PreAccept and Accept only to as many peers as the quorum needs.
    pub thrifty: bool,
    /// Most commands batched into one instance.
    pub batch_max: usize,
    /// Most key and value bytes batched into one instance (one larger command still goes
    /// alone): keeps messages well under the transport's limit.
    pub batch_bytes_max: usize,
    /// Most proposals waiting for an instance; beyond it proposals are refused.
    pub pending_max: usize,
    /// Most bytes of commands waiting for an instance.
    pub pending_bytes_max: usize,
    /// Most instances this replica leads at once that are not committed yet. Bounds the work in
    /// flight and, under conflicts, how large dependency components grow.
    pub inflight_max: usize,
    /// First wait before resending to peers that did not answer; doubles up to `retry_max`.
    pub retry: Duration,
    pub retry_max: Duration,
    /// How long an execution may wait on a dependency before asking peers for its Commit.
    pub fetch_after: Duration,
    /// How long an execution may wait on an uncommitted dependency before this replica takes
    /// it over (recovery); later attempts back off exponentially.
    pub recover_after: Duration,
    /// How often to send peers a Watermark (anti-entropy for lost or missed commits; also the
    /// heartbeat).
    pub watermark_every: Duration,
    /// A peer not heard from for this long is suspected (see `Replica::is_suspected`).
    pub suspect_after: Duration,
    /// Most Commits sent in answer to one Watermark.
    pub watermark_commits_max: usize,
    /// While a peer reported more committed than this replica knows (by more than
    /// `watermark_commits_max` slots: it was down, or partitioned, for a while), it sends that
    /// peer a Watermark this often instead of every `watermark_every`, pulling the Commits it
    /// lacks at up to `watermark_commits_max` per round trip.
    pub catch_up_every: Duration,
    /// Drop instances from memory once they are executed here and every peer reported them
    /// committed (through Watermarks): nobody can need their Commit from us any more. Off by
    /// default so that tests can inspect every instance; the replica binary turns it on.
    pub gc_executed: bool,
    /// Per row, how far behind a majority's executed prefix a peer may fall before garbage
    /// collection stops waiting for it (it then catches up by snapshot; see `collect`).
    pub retention_instances: u64,
    /// The same bound in bytes: per row, the key and value bytes of the commands of the
    /// instances kept in memory below a majority's executed prefix (see `collect`). Past
    /// either bound garbage collection stops waiting for the lagging peer.
    pub retention_bytes: u64,
    /// A client session idle this long is expired (see `session`); its late retries are then
    /// refused as expired instead of answered.
    pub session_ttl: Duration,
    /// Most sessions in the table before requests that would open a new one are refused.
    pub sessions_max: usize,
    /// Deliberate bugs, for tests that show the simulator's checks catch them: empty unless
    /// built with the `sabotage` feature (tests only), all off by default.
    pub sabotage: Sabotage,
}

/// Declares `Sabotage` with one switch per planted bug: a field (only with the `sabotage`
/// feature, so a release build holds no switch at all) and a method of the same name that the
/// core consults, `false` and gone after optimization without the feature.
macro_rules! sabotage_switches {
    ($($(#[doc = $doc:literal])+ $name:ident,)+) => {
        /// Deliberate protocol bugs that tests plant to show that each safety or liveness
        /// check can fail. Every flag defaults to off; without the `sabotage` cargo feature
        /// (release builds) there are none (see `Cargo.toml`).
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        pub struct Sabotage {
            $(
                $(#[doc = $doc])+
                #[cfg(feature = "sabotage")]
                pub $name: bool,
            )+
        }

        impl Sabotage {
            $(
                $(#[doc = $doc])+
                #[cfg(feature = "sabotage")]
                #[inline(always)]
                pub fn $name(&self) -> bool {
                    self.$name
                }

                $(#[doc = $doc])+
                #[cfg(not(feature = "sabotage"))]
                #[inline(always)]
                pub fn $name(&self) -> bool {
                    false
                }
            )+
        }
    };
}

sabotage_switches! {
    /// Compute no dependencies (visibility and execution order break).
    forget_deps,
    /// A sealed replica votes on old-epoch instances above its seal, as if it had none (an
    /// old instance may then commit a command above the boundary, unordered against new ones).
    vote_above_seal,
    /// A sealed replica takes the boundary it merely read (the maximum of the seals of the
    /// first majority that promised) as decided, without Paxos's second phase, and votes below
    /// it (another replica may read another majority's, which does not cover that vote).
    vote_below_read_boundary,
    /// New-epoch instances do not cover the old epoch's boundary in their deps (an old
    /// instance a new one's quorum did not see is left unordered against it).
    omit_boundary_deps,
    /// Execute a strongly connected component in reverse `InstanceId` order.
    reverse_component_order,
    /// On Commit, keep this replica's own deps instead of the decided ones (agreement breaks).
    keep_own_deps_on_commit,
    /// Apply every command, retries included (exactly-once breaks).
    skip_dedup,
    /// Answer GETs from local state when proposed, without consensus (linearizability breaks).
    local_reads,
    /// Never resend and never fetch missing commits (liveness breaks under message loss).
    no_retransmit,
    /// Recovery commits a no-op unless it finds the instance committed (agreement breaks: a
    /// command committed outside the recovery's quorum loses its instance).
    recovery_always_nop,
    /// Recovery of an old-epoch instance at or above its epoch's decided boundary follows
    /// the answers (Validate, Accept) instead of ending it as a no-op (liveness breaks: the
    /// sealed replicas refuse its command forever, so the recovery never ends).
    keep_recovering_above_boundary,
    /// A recoverer that does not hold an instance (it knows it only as a dependency) names
    /// its own current epoch for it and counts that epoch's members, as if the instance could
    /// be of no older one (agreement breaks: a no-op decided by the current epoch's quorum
    /// for an old instance a quorum of its own epoch committed with a command).
    recover_unknown_in_current_epoch,
    /// Recovery accepts a possibly fast-committed command without Validate (visibility breaks:
    /// the command may never have been committed, and a conflicting one went ahead without it).
    recovery_skips_validate,
    /// A replica that lost its data is not fenced as an acceptor of the older epochs'
    /// boundaries: sealing one again, it promises afresh though its old incarnation may have
    /// promised and accepted there (two boundaries may be decided).
    promise_again_after_wipe,
    /// A replica that lost its data rejoins without horizons: it votes as if its old
    /// incarnation never voted (agreement breaks).
    rejoin_without_horizons,
    /// Watermarks claim every row committed and executed far beyond anything proposed (a
    /// lying peer: "I executed everything").
    forge_watermarks,
    /// Accept any Watermark, however impossible (peers then drop from memory what the liar
    /// still needs, and it never gets those Commits again: liveness breaks).
    trust_watermarks,
    /// Expire idle sessions by this replica's own clock, straight from its table, instead of
    /// through a replicated expiry (replicas then disagree on which retries are answered).
    expire_locally,
    /// A retry whose session is not in the table starts a new session and executes (a late
    /// retry of an expired session executes twice).
    retry_starts_session,
    /// Collect past a lagging peer once this replica alone executed the retention beyond it,
    /// without waiting for a majority (a minority's execution is then all that remains of
    /// instances a recovery must not decide again).
    collect_without_majority,
    /// Collect by ranking every peer's executed prefix, removed members included, against the
    /// current configuration's quorum (the rule before epochs) instead of by the members of
    /// each instance's own epoch (an old instance is then collected when too few of its own
    /// epoch's members executed it).
    collect_by_current_epoch,
    /// A member told that peers collected instances it has not executed goes on from its own
    /// stale state instead of installing a snapshot (it waits forever for Commits nobody
    /// holds any more).
    ignore_collected,
    /// A voter's PreAcceptOk leaves before its record is durable, like the leader's own
    /// PreAccept (a crash can then lose a vote a leader counted).
    answer_before_durable,
    /// A restart does not skip the slots its previous run may have started without their
    /// records reaching the disk: it proposes new commands in them at ballot 0.
    reuse_unsynced_slots,
    /// Ask and count every replica ever a member, removed ones included, as voters on an
    /// instance (quorums of two instances can then miss each other: visibility breaks).
    count_removed_votes,
    /// Decide every instance under the current epoch's configuration instead of its own: an
    /// old-epoch instance is then asked of, and committed by, a quorum of the new members
    /// (which need not meet the old epoch's quorums).
    quorum_of_current_epoch,
}

// Without the feature `Sabotage` is empty: the switches are not in the build at all.
#[cfg(not(feature = "sabotage"))]
const _: () = assert!(std::mem::size_of::<Sabotage>() == 0);

impl Options {
    /// Defaults for replica `id` of `n`.
    pub fn new(id: ReplicaId, n: usize) -> Self {
        Options {
            id,
            n,
            thrifty: false,
            batch_max: limits::BATCH_MAX,
            batch_bytes_max: limits::BATCH_BYTES_MAX,
            pending_max: limits::PENDING_MAX,
            pending_bytes_max: limits::PENDING_BYTES_MAX,
            inflight_max: limits::INFLIGHT_MAX,
            retry: Duration::from_millis(200),
            retry_max: Duration::from_secs(2),
            fetch_after: Duration::from_millis(300),
            recover_after: limits::RECOVER_AFTER,
            watermark_every: limits::HEARTBEAT,
            suspect_after: limits::SUSPECT_AFTER,
            watermark_commits_max: limits::WATERMARK_COMMITS_MAX,
            catch_up_every: Duration::from_millis(10),
            gc_executed: false,
            retention_instances: limits::RETENTION_INSTANCES,
            retention_bytes: limits::RETENTION_BYTES,
            session_ttl: limits::SESSION_TTL,
            sessions_max: limits::SESSIONS_MAX,
            sabotage: Sabotage::default(),
        }
    }

    /// Checks the relations between the tunables.
    pub fn validate(&self) -> Result<(), OptionsError> {
        // An id beyond epoch 0's `n` is a replica being added (issue 15): it joins from a
        // peer's snapshot, which gives it the rows of the configuration that added it.
        if self.n == 0 || self.id.index() >= limits::MEMBERS_EVER_MAX {
            return Err(OptionsError::Id(self.id, self.n));
        }
        // Quorums are sized for N = 2F+1; with N even they need not intersect.
        if self.n.is_multiple_of(2) {
            return Err(OptionsError::Even(self.n));
        }
        if self.n >= limits::MEMBERS_EVER_MAX {
            return Err(OptionsError::TooMany(self.n));
        }
        for (name, v) in [
            ("batch_max", self.batch_max),
            ("batch_bytes_max", self.batch_bytes_max),
            ("pending_max", self.pending_max),
            ("pending_bytes_max", self.pending_bytes_max),
            ("inflight_max", self.inflight_max),
            ("sessions_max", self.sessions_max),
            ("retention_instances", self.retention_instances as usize),
            ("retention_bytes", self.retention_bytes as usize),
        ] {
            if v == 0 {
                return Err(OptionsError::Zero(name));
            }
        }
        if self.retry.is_zero()
            || self.retry > self.retry_max
            || self.fetch_after.is_zero()
            || self.recover_after.is_zero()
            || self.watermark_every.is_zero()
            || self.catch_up_every.is_zero()
            || self.suspect_after <= self.watermark_every
        {
            return Err(OptionsError::Timers);
        }
        if self.session_ttl < limits::SESSION_TTL_MIN {
            return Err(OptionsError::SessionTtl(self.session_ttl));
        }
        Ok(())
    }
}

/// Invalid [`Options`].
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error(
        "replica id {0} is neither one of epoch 0's {1} nor below the most ids ever handed out"
    )]
    Id(ReplicaId, usize),
    #[error("a cluster of {0} replicas: the number of replicas must be odd (quorums need not intersect otherwise)")]
    Even(usize),
    #[error(
        "a cluster of {0} replicas: at most {max} ids are ever handed out",
        max = limits::MEMBERS_EVER_MAX
    )]
    TooMany(usize),
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error(
        "timers must be positive, retry must not exceed retry_max, and suspect_after must \
         exceed watermark_every"
    )]
    Timers,
    #[error(
        "session TTL {0:?} is too short: at least {min:?}",
        min = limits::SESSION_TTL_MIN
    )]
    SessionTtl(Duration),
}
