//! Every bound of the service in one place: each limit with its default and why, and the
//! relations between them, checked at compile time. The CLI takes its defaults from here, and
//! the modules that enforce a bound name it from here.
//!
//! Sizes are in bytes, counts in entries, times carry their unit in the name.

use std::time::Duration;

// ---- commands -------------------------------------------------------------------------------

/// Longest key accepted (what etcd's users know as a key is rarely longer than a path).
pub const KEY_BYTES_MAX: usize = 1024;
/// Longest value accepted: larger blobs belong in a blob store, and every value is kept in
/// memory, in the log and in every checkpoint.
pub const VALUE_BYTES_MAX: usize = 1024 * 1024;
/// Room for the protobuf framing of one command or reply around its key and value(s).
pub const COMMAND_OVERHEAD_BYTES: usize = 1024;
/// Largest command: a CAS holds a key and two values.
pub const COMMAND_BYTES_MAX: usize = KEY_BYTES_MAX + 2 * VALUE_BYTES_MAX + COMMAND_OVERHEAD_BYTES;

// ---- batching and messages ------------------------------------------------------------------

/// Default most commands in one instance: batching grows with load, and one instance's
/// execution is one step of the event loop, so this bounds that step.
pub const BATCH_MAX: usize = 1024;
/// Most bytes of commands in one instance (a single larger command still goes alone, so a
/// batch holds at most this plus one command).
pub const BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;
/// Largest protocol message: an instance's batch plus its deps and framing.
pub const MESSAGE_BYTES_MAX: usize = BATCH_BYTES_MAX + COMMAND_BYTES_MAX + 64 * 1024;
/// Largest gRPC message on a peer stream or a peer call (a stream item carries several
/// messages; a snapshot chunk must fit too).
pub const PEER_GRPC_MESSAGE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Largest gRPC message from or to a client: one command, or one reply carrying a value.
pub const CLIENT_GRPC_MESSAGE_BYTES_MAX: usize = COMMAND_BYTES_MAX + COMMAND_OVERHEAD_BYTES;
/// Most messages written as one peer stream item.
pub const STREAM_BATCH_MESSAGES_MAX: usize = 1024;
/// Most bytes (roughly) written as one peer stream item; a single larger message goes alone.
pub const STREAM_BATCH_BYTES_MAX: usize = 4 * 1024 * 1024;

// ---- storage --------------------------------------------------------------------------------

/// Largest log record accepted when reading back: one instance (a batch) and its metadata.
pub const RECORD_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most bytes of log records (as framed) handed to the log writer and not yet durable: past
/// it the event loop takes no more events until the disk catches up (backpressure onto
/// bigChannel, then onto clients and peers), so a slow or stalled disk bounds what piles up.
pub const WRITER_QUEUE_BYTES_MAX: usize = 64 * 1024 * 1024;
/// Most event-loop iterations whose records (and outputs) wait for the log writer: an
/// iteration's held messages and replies wait with them, and must not pile up either.
pub const WRITER_QUEUE_MAX: usize = 4096;
/// The log grows by segments of this many bytes, written as zeros ahead of the records by the
/// log writer between groups (see `server::storage::Log`): a sync then writes data blocks only,
/// not the inode, except when the records outrun the zeros. Small enough that writing one is a
/// short pause of the writer and a full disk still shows soon (the zeros take records).
pub const LOG_SEGMENT_BYTES: usize = 1024 * 1024;
/// Largest checkpoint accepted when reading back (its length field is 32 bits).
pub const CHECKPOINT_BYTES_MAX: usize = u32::MAX as usize;
/// Largest snapshot a joining replica accepts: a checkpoint and the records beside it.
pub const SNAPSHOT_BYTES_MAX: usize = u32::MAX as usize;
/// Bytes per chunk of a snapshot stream.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Snapshots taken and streamed at once: each holds a whole encoded state in memory.
pub const SNAPSHOTS_IN_FLIGHT_MAX: usize = 1;
/// How long a snapshot stream may wait for its reader to take one chunk before it is
/// abandoned (and its memory freed).
pub const SNAPSHOT_CHUNK_TIMEOUT: Duration = Duration::from_secs(30);
/// Least time between two Join calls of one peer: a Join walks every instance on the event
/// loop, and a joiner retries with backoff from 50 ms.
pub const JOIN_INTERVAL_MIN: Duration = Duration::from_millis(50);
/// Default: checkpoint (and cut the log) each time this many more instances were collected.
pub const CHECKPOINT_EVERY: u64 = 20_000;
/// Default retention (per row, in instances): how far a member may fall behind the executed
/// prefix of a majority before the survivors collect past it (and it must catch up by
/// snapshot when it returns; see `replica::collect`). Bounds survivors' memory and log with a
/// member down. Measured with `bench/retention.sh` (16-byte keys and values, c64): an instance
/// held costs about 5.5 KB of resident memory, and 100,000 took 8 minutes of load to reach,
/// growing survivors to 1 GB meanwhile; 20,000 per row caps that near 220 MB for two rows, and
/// a member away longer catches up by snapshot (10 s there) instead of by replaying Commits.
pub const RETENTION_INSTANCES: u64 = 20_000;
/// Default retention (per row, in bytes): the same bound measured in the key and value bytes
/// of the commands held (`Op::size_bytes`, what the pending and batch budgets count), for
/// loads of large values, where 100,000 instances could be 100 GiB. The survivors collect past
/// a lagging member when either bound is passed; 256 MiB per row keeps a row's retention
/// within what a snapshot streams in seconds.
pub const RETENTION_BYTES: u64 = 256 * 1024 * 1024;

// ---- queues ---------------------------------------------------------------------------------

/// Default most client proposals waiting for an instance before new ones are refused
/// (RESOURCE_EXHAUSTED): the backlog a replica admits.
pub const PENDING_MAX: usize = 65_536;
/// Most bytes of client commands waiting for an instance (a count alone lets 65,536 proposals
/// of 2 MiB each pin 128 GiB).
pub const PENDING_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Default most uncommitted instances a replica leads at once: proposals that arrive
/// meanwhile wait and go out together, so a low limit makes batches, not queues.
pub const INFLIGHT_MAX: usize = 16;
/// Most slots of its own row a replica may have started beyond the first one whose record it
/// does not yet know durable. A new instance's first PreAccept leaves before its record is
/// synced (see `replica::leader`), so a crash can lose the records of slots that peers saw;
/// restarting, a replica skips this many slots past the end of what its disk holds (the
/// durable reservation: it never proposes another command in a slot it may have used at ballot
/// 0) and has peers settle the skipped ones. Each restart costs up to this many no-op
/// recoveries, so it stays near what one event-loop iteration starts (`INFLIGHT_MAX`).
pub const OWN_SLOTS_UNSYNCED_MAX: u64 = 16;
/// Capacity of bigChannel, in events (each a client proposal or a batch of peer messages).
pub const BIG_CHANNEL_MAX: usize = 65_536;
/// Most events the event loop takes from bigChannel before it flushes and sends: bounds the
/// work of one iteration, and so the latency a burst adds.
pub const DRAIN_MAX: usize = 4096;
/// Capacity of each peer's outbound queue, in encoded messages.
pub const PEER_QUEUE_MAX: usize = 65_536;
/// Capacity of each peer's outbound queue, in bytes: what a peer that does not read costs at
/// most (past it messages are dropped and counted; the protocol resends what matters).
pub const PEER_QUEUE_BYTES_MAX: usize = 128 * 1024 * 1024;
/// bigChannel's capacity in bytes of commands and peer messages: what a flood costs at most.
/// A client proposal that does not fit is refused at once (RESOURCE_EXHAUSTED); a peer's
/// stream waits (backpressure).
pub const BIG_CHANNEL_BYTES_MAX: usize = 256 * 1024 * 1024;
/// Commits a replica sends a lagging peer in answer to one Watermark.
pub const WATERMARK_COMMITS_MAX: usize = 256;

// ---- client connections ---------------------------------------------------------------------

/// Most client connections a replica holds at once; one more is closed at once and counted.
pub const CLIENT_CONNECTIONS_MAX: usize = 1024;
/// Most requests in flight on one client connection (HTTP/2 streams): more wait at the
/// client. The bundled client multiplexes all its sessions over one connection per replica.
pub const CLIENT_STREAMS_PER_CONNECTION_MAX: u32 = 1024;
/// HTTP/2 keepalive on client connections: a connection whose peer stops answering pings for
/// this long is closed, so dead clients do not hold slots.
/// Most bytes of client request bodies held at once across all client connections: each
/// body's bytes count as they arrive until the request is decoded, and one that does not fit
/// fails at once (RESOURCE_EXHAUSTED). Without it a flood costs connections × streams ×
/// message size.
pub const CLIENT_REQUEST_BYTES_MAX: usize = 64 * 1024 * 1024;
/// HTTP/2 flow-control windows of a client connection and of one stream: what a client can
/// have sent that the replica has not yet read (so the unread bytes of a connection are
/// bounded by the connection window).
pub const CLIENT_CONNECTION_WINDOW_BYTES: u32 = 1024 * 1024;
pub const CLIENT_STREAM_WINDOW_BYTES: u32 = 1024 * 1024;
pub const CLIENT_KEEPALIVE: Duration = Duration::from_secs(30);
pub const CLIENT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

// ---- time -----------------------------------------------------------------------------------

/// Default time a client's Propose may wait for its command to execute.
pub const PROPOSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default Watermark (heartbeat) interval.
pub const HEARTBEAT: Duration = Duration::from_secs(1);
/// Default silence after which a peer is suspected (several heartbeats).
pub const SUSPECT_AFTER: Duration = Duration::from_secs(3);
/// Default wait before an instance execution needs is taken over by recovery.
pub const RECOVER_AFTER: Duration = Duration::from_secs(1);
/// How often the event loop checks the core's timers.
pub const TICK: Duration = Duration::from_millis(10);
/// Longest TLS handshake, on each listener and each dial: a connection that has not finished
/// it by then is dropped (a stranger cannot hold handshakes open).
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

// ---- sessions (exactly once) ----------------------------------------------------------------

/// Largest result value a session keeps for a retry: a retried GET whose value was larger reads
/// again (harmless and linearizable), a retried successful CAS knows its value from the retry,
/// and a retried failed CAS gets a clear error. Without this bound 100 sessions that each read a
/// 1 MiB value kept 100 MiB.
pub const SESSION_RESULT_BYTES_MAX: usize = 1024;
/// Default time a session may stay idle before it is expired (its retries then get a clear
/// "session expired" error instead of the original answer). Far above any sensible retry
/// window: the bundled client gives up on a request after seconds.
pub const SESSION_TTL: Duration = Duration::from_secs(5 * 60);
/// Shortest TTL accepted: a client must be able to retry within its propose timeout.
pub const SESSION_TTL_MIN: Duration = Duration::from_millis(100);
/// Default most sessions a replica's table holds before it refuses requests that would open
/// a new one (RESOURCE_EXHAUSTED, at proposal): about 150 bytes each, so ~150 MiB at most.
pub const SESSIONS_MAX: usize = 1_000_000;
/// Most session expiries a replica proposes per tick: at 10 ms ticks, 25,600 a second, far
/// above the rate sessions open at under `SESSIONS_MAX` and the TTL, and a bounded share of a
/// batch.
pub const EXPIRIES_PER_TICK_MAX: usize = 256;
/// Most session expiries a replica has proposed and not seen executed yet; after
/// `SESSION_TTL` an expiry still unseen (its instance became a no-op) may be proposed again.
pub const EXPIRIES_IN_FLIGHT_MAX: usize = 4096;

// ---- cluster --------------------------------------------------------------------------------

/// Largest cluster: ballots and metric labels are sized for it, and EPaxos gains nothing from
/// more replicas.
pub const REPLICAS_MAX: usize = 15;
/// Most replica ids ever handed out over a cluster's life: ids are never reused (a replacement
/// takes a fresh one, see `epoch`), and every per-row table (watermarks, horizons, the sealed
/// vectors of membership changes) is as long as the highest id, so this bounds them: 64 rows
/// of a few words each. Room for the largest cluster replaced member by member three times.
pub const MEMBERS_EVER_MAX: usize = 64;
/// Longest address (`host:port`, peer or client) a membership change may carry: a DNS name is
/// at most 253 bytes, a port 6 more. Opaque to the core; bounded because every replica keeps
/// the addresses of every member and the change travels in a command.
pub const ADDRESS_BYTES_MAX: usize = 261;
/// Seals of old epochs a replica keeps (see `replica::seal`): one per change it executed, the
/// oldest dropped first. On an instance of an epoch older than every seal kept it refuses every
/// vote but a no-op's (stricter than its seal, so still safe): such instances were settled many
/// changes ago.
pub const SEALS_KEPT_MAX: usize = 8;

// The relations the code relies on, checked when it compiles.
const _: () = {
    // One command fits a batch, so a batch that admits its first command is never empty.
    assert!(COMMAND_BYTES_MAX <= BATCH_BYTES_MAX);
    // A batch fits a message, a message fits a peer gRPC message and a log record.
    assert!(BATCH_BYTES_MAX + COMMAND_BYTES_MAX <= MESSAGE_BYTES_MAX);
    assert!(MESSAGE_BYTES_MAX <= PEER_GRPC_MESSAGE_BYTES_MAX);
    assert!(MESSAGE_BYTES_MAX <= RECORD_BYTES_MAX);
    // A stream item of small messages fits a gRPC message; a large one goes alone.
    assert!(STREAM_BATCH_BYTES_MAX + MESSAGE_BYTES_MAX <= PEER_GRPC_MESSAGE_BYTES_MAX);
    // A snapshot chunk fits a peer gRPC message; a record fits a checkpoint and a snapshot.
    assert!(SNAPSHOT_CHUNK_BYTES < PEER_GRPC_MESSAGE_BYTES_MAX);
    assert!(RECORD_BYTES_MAX <= CHECKPOINT_BYTES_MAX);
    // A full batch's record fits the writer's queue, and what waits for the disk stays below
    // what bigChannel may hold.
    assert!(MESSAGE_BYTES_MAX <= WRITER_QUEUE_BYTES_MAX);
    assert!(WRITER_QUEUE_BYTES_MAX <= BIG_CHANNEL_BYTES_MAX);
    assert!(WRITER_QUEUE_MAX >= 2);
    assert!(LOG_SEGMENT_BYTES > 0 && LOG_SEGMENT_BYTES <= RECORD_BYTES_MAX);
    assert!(CHECKPOINT_BYTES_MAX <= SNAPSHOT_BYTES_MAX);
    // A client request or reply (one command, one value) fits the client's gRPC limit, which
    // is far below the peers' (a stranger's flood costs less).
    assert!(COMMAND_BYTES_MAX < CLIENT_GRPC_MESSAGE_BYTES_MAX);
    assert!(CLIENT_GRPC_MESSAGE_BYTES_MAX < PEER_GRPC_MESSAGE_BYTES_MAX);
    // Suspicion needs several missed heartbeats.
    assert!(SUSPECT_AFTER.as_millis() > HEARTBEAT.as_millis());
    assert!(BATCH_MAX >= 1 && INFLIGHT_MAX >= 1 && PENDING_MAX >= BATCH_MAX);
    assert!(DRAIN_MAX <= BIG_CHANNEL_MAX);
    // With the default in-flight bound, the slots one iteration starts never wait for the
    // previous sync (the window is never what limits the start of instances).
    assert!(OWN_SLOTS_UNSYNCED_MAX >= INFLIGHT_MAX as u64);
    // The newest seal is the one a replica must keep; the rest is slack for slow old instances.
    assert!(SEALS_KEPT_MAX >= 2);
    // The largest peer batch and the largest command each fit bigChannel's byte budget (its
    // semaphore counts in u32), and the largest message fits a peer's queue.
    assert!(PEER_GRPC_MESSAGE_BYTES_MAX <= BIG_CHANNEL_BYTES_MAX);
    assert!(BIG_CHANNEL_BYTES_MAX <= u32::MAX as usize);
    assert!(MESSAGE_BYTES_MAX <= PEER_QUEUE_BYTES_MAX);
    // One request of the largest size fits the request-bytes budget, and its command fits
    // bigChannel's and the pending budget.
    assert!(CLIENT_GRPC_MESSAGE_BYTES_MAX <= CLIENT_REQUEST_BYTES_MAX);
    assert!(CLIENT_REQUEST_BYTES_MAX <= u32::MAX as usize);
    assert!(COMMAND_BYTES_MAX <= PENDING_BYTES_MAX);
    assert!(CLIENT_STREAM_WINDOW_BYTES <= CLIENT_CONNECTION_WINDOW_BYTES);
    // A kept result is a small share of the largest value; expiries fit a batch and the
    // in-flight bound; a session outlives every wait of a client's request by far.
    assert!(SESSION_RESULT_BYTES_MAX < VALUE_BYTES_MAX);
    assert!(EXPIRIES_PER_TICK_MAX <= BATCH_MAX);
    assert!(EXPIRIES_PER_TICK_MAX <= EXPIRIES_IN_FLIGHT_MAX);
    assert!(EXPIRIES_IN_FLIGHT_MAX <= PENDING_MAX);
    assert!(SESSION_TTL.as_millis() > 10 * PROPOSE_TIMEOUT.as_millis());
    assert!(SESSION_TTL_MIN.as_millis() <= SESSION_TTL.as_millis());
    assert!(SESSIONS_MAX >= 1);
    // A member that catches up through Watermarks (a short outage) is not pushed into a
    // snapshot: the survivors keep more than one Watermark's answer for it.
    assert!(RETENTION_INSTANCES > WATERMARK_COMMITS_MAX as u64);
    // The byte retention holds many of the largest instances: one large batch does not
    // push a member that is merely slow into a snapshot.
    assert!(RETENTION_BYTES >= 16 * (BATCH_BYTES_MAX + COMMAND_BYTES_MAX) as u64);
    // Epoch 0 (the largest seed cluster) fits the ids ever handed out, with room for changes;
    // ids travel as u32 on the wire.
    assert!(REPLICAS_MAX < MEMBERS_EVER_MAX);
    assert!(MEMBERS_EVER_MAX <= u32::MAX as usize);
    // A membership change (two addresses) is a command like any other.
    assert!(2 * ADDRESS_BYTES_MAX + COMMAND_OVERHEAD_BYTES <= COMMAND_BYTES_MAX);
};
