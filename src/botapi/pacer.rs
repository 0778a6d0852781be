//! The pacer: the one gate every outgoing Bot API call passes, so the bot stays within
//! Telegram's limits *before* Telegram has to refuse (SPEC "Telegram interface", issue 13).
//!
//! Telegram allows about 30 calls a second overall, about one a second per chat (a short burst
//! of two is tolerated) and 20 a minute per group, and answers 429 `retry_after` past that.
//! Refusals are expensive: the refused message waits at least a second, and an error that ends a
//! handler means a user never sees the reply at all. So calls wait here for a slot instead.
//!
//! # Model
//!
//! A caller asks for a slot for a [`Target`] (a chat, or no chat) at a [`Priority`]. Waiting
//! callers form one ordered set: urgent first, then progress, each in arrival order. A slot is
//! granted to the first waiter whose chat (and group) limit allows a call now, provided the
//! overall limit allows one too. A waiter whose chat is held back (by its own rate or by a 429)
//! is simply skipped, so one busy or refused chat never delays another; no lock is held across a
//! wait. The grant only *starts* the call: the call itself (an upload can take minutes) runs in
//! the caller's task, concurrently with every other call.
//!
//! Grants happen when a caller arrives (if a slot is free right away) and otherwise in a small
//! driver task that sleeps until the earliest moment a waiter can go.
//!
//! Each limit is a sliding window over the moments granted calls reach Telegram: at most `limit`
//! in any `span`. That moment is not known here, only bounded: after the grant, and before the
//! answer. A call still unanswered is assumed to arrive up to [`PacerConfig::margin`] after its
//! grant (a new connection, a busy machine); once answered, its answer's moment bounds it. So
//! quick calls cost the window nothing beyond its span (1,000 acknowledgements take 33.3 s plus
//! one round trip per 30), while the margin still guards calls that take long to arrive.

//! # Progress edits are coalesced
//!
//! Status edits ([`Pacer::edit`] with [`Priority::Progress`]) are keyed by their message. While
//! an edit for a message waits, a newer edit for the same message takes over its place in the
//! line (it is not queued behind it) and the older caller returns [`Edited::Superseded`] without
//! calling Telegram. So a message is edited at most once per slot, always with its latest text.
//! An urgent edit of the message (its final text) removes a waiting progress edit, and a progress
//! edit that arrives while the final edit waits is dropped, so a stale percentage can never
//! overwrite the final line.
//!
//! # 429
//!
//! [`Pacer::call`] and [`Pacer::edit`] retry a call refused with `RetryAfter` after the wait
//! Telegram asked for; the retry is not an attempt and the message is never dropped (only
//! shutdown ends the wait). The refusal also holds the chat (or, for a call to no chat,
//! everyone: Telegram does not say which limit it was, and a call to no chat can only have hit
//! the overall one) until then, so the chat's other waiting calls do not run into it too.
//!
//! This module imports nothing from the rest of the crate, so it can sit under any Bot API layer.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::IntoFuture;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use teloxide::types::ChatId;
use teloxide::RequestError;
use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

/// Telegram's limits, and the margin kept below them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PacerConfig {
    /// Calls a second over all chats (Telegram: about 30). 0 turns the limit off.
    pub global_per_sec: u32,
    /// Sustained calls a second to one chat (Telegram: about 1). 0 turns the limit off.
    pub per_chat_per_sec: u32,
    /// Calls one chat may get at once before its rate applies. Telegram refuses the third call
    /// within a second, so 2 lets an acknowledgement and its first status edit go together while
    /// any three calls to a chat still span two seconds.
    pub per_chat_burst: u32,
    /// Calls a minute to one group (negative chat id; Telegram: 20). 0 turns the limit off.
    pub per_group_per_min: u32,
    /// How late after its grant a call still unanswered may reach Telegram (a new connection,
    /// a busy machine). An answered call is known to have arrived by its answer, so this costs
    /// throughput only while calls are slow to answer: a quick call gives its slot back when
    /// its answer comes. On a loaded 2-core CI machine 20 ms and then 50 ms were not enough
    /// against the project's fake (requests reached it later than that, and 13 of 300 calls
    /// were refused); a call unanswered after a second is an upload whose request arrived long
    /// ago, so a second costs little and is never too short.
    pub margin: Duration,
}

impl PacerConfig {
    /// The configured limits (`telegram.pace_*`), with the default burst and margin.
    pub fn from_config(t: &crate::config::TelegramConfig) -> Self {
        PacerConfig {
            global_per_sec: t.pace_per_sec,
            per_chat_per_sec: t.pace_per_chat_per_sec,
            per_group_per_min: t.pace_per_group_per_min,
            ..PacerConfig::default()
        }
    }
}

impl Default for PacerConfig {
    fn default() -> Self {
        PacerConfig {
            global_per_sec: 30,
            per_chat_per_sec: 1,
            per_chat_burst: 2,
            per_group_per_min: 20,
            margin: Duration::from_secs(1),
        }
    }
}

/// Which calls go first when slots are scarce. `Urgent` orders before `Progress`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Priority {
    /// Acknowledgements, refusals, final results, uploads, admin alerts: what a user (or admin)
    /// must see.
    Urgent,
    /// Status edits: useful, replaceable, and the first to wait under pressure.
    Progress,
}

/// What a call is addressed to, for the per-chat and per-group limits.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// A call with a `chat_id`. Negative ids are groups and get the per-minute limit too.
    Chat(i64),
    /// A call to no chat (`getMe`, `setMyCommands`, `answerCallbackQuery`): overall limit only.
    NoChat,
}

impl Target {
    fn chat(self) -> Option<i64> {
        match self {
            Target::Chat(id) => Some(id),
            Target::NoChat => None,
        }
    }
}

impl From<i64> for Target {
    fn from(id: i64) -> Self {
        Target::Chat(id)
    }
}

impl From<ChatId> for Target {
    fn from(id: ChatId) -> Self {
        Target::Chat(id.0)
    }
}

/// The message a status edit is for: edits with the same key are coalesced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct MessageKey {
    pub chat: i64,
    pub message_id: i32,
}

impl MessageKey {
    pub fn new(chat: i64, message_id: i32) -> Self {
        MessageKey { chat, message_id }
    }
}

/// The outcome of [`Pacer::edit`].
#[derive(Debug)]
pub enum Edited<T> {
    /// This caller's edit was sent; Telegram's answer.
    Sent(T),
    /// A newer edit of the same message (or its final, urgent edit) took this one's place; no
    /// call was made for this caller.
    Superseded,
}

/// Why a paced call did not complete.
#[derive(Debug, thiserror::Error)]
pub enum PaceError {
    /// Shutdown began while the call waited for its slot (or its `retry_after`).
    #[error("shutting down: the call was not sent")]
    Shutdown,
    /// Telegram (or the network) failed the call with something other than a 429.
    #[error(transparent)]
    Request(#[from] RequestError),
}

/// Counters since the pacer was built, for logs, metrics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacerStats {
    /// Slots granted (calls started, retries included).
    pub granted: u64,
    /// Calls refused with 429 and queued again.
    pub retried_after_429: u64,
    /// Edits that were replaced by a newer edit of their message and never sent.
    pub superseded: u64,
    /// Callers waiting for a slot right now.
    pub waiting: usize,
}

/// The pacer. Cheap to clone; every clone shares one set of limits and one line of waiters.
#[derive(Clone)]
pub struct Pacer {
    shared: Arc<Shared>,
    /// Stops the driver task when the last clone is dropped.
    _driver: Arc<DropGuard>,
}

impl Pacer {
    /// Builds the pacer and spawns its driver task (so it must be called within a tokio
    /// runtime). When `shutdown` fires, every waiting call returns [`PaceError::Shutdown`] and
    /// new calls are refused the same way, so shutdown never hangs on a paced wait.
    pub fn new(config: PacerConfig, shutdown: CancellationToken) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State::new(config)),
            wake: Notify::new(),
            shutdown: shutdown.clone(),
        });
        let stop = shutdown.child_token();
        tokio::spawn(drive(shared.clone(), stop.clone()));
        Pacer {
            shared,
            _driver: Arc::new(stop.drop_guard()),
        }
    }

    /// Runs a call through the pacer: waits for a slot for `target` at `priority`, makes the
    /// call, and on `RetryAfter` holds the chat for that long and waits for a slot again (no
    /// attempt counted, never dropped). Any other outcome is returned as it is.
    ///
    /// `make_call` is called once per attempt, so it must build the request anew, e.g.
    /// `|| bot.send_message(chat, text.clone())` (a teloxide request is an `IntoFuture`).
    pub async fn call<T, F, R>(
        &self,
        target: impl Into<Target>,
        priority: Priority,
        mut make_call: F,
    ) -> Result<T, PaceError>
    where
        F: FnMut() -> R,
        R: IntoFuture<Output = Result<T, RequestError>>,
    {
        let target = target.into();
        loop {
            let signal = self.acquire(target.chat(), priority, Join::Plain).await?;
            let answer = make_call().into_future().await;
            self.answered(target.chat(), signal);
            match answer {
                Err(RequestError::RetryAfter(wait)) => self.refused(target, wait.duration()),
                other => return other.map_err(PaceError::Request),
            }
        }
    }

    /// Edits a message through the pacer, coalesced by `key` (see the module docs): returns
    /// [`Edited::Superseded`] without calling Telegram when a newer edit of the same message took
    /// this one's place while it waited. `Priority::Progress` for status updates,
    /// `Priority::Urgent` for a message's final text (which also discards a waiting progress
    /// edit of it). 429 is handled as in [`Pacer::call`], except that a refused edit gives way
    /// to a newer one that arrived meanwhile rather than overwrite it.
    ///
    /// `make_call` captures this caller's text, e.g.
    /// `|| bot.edit_message_text(chat, id, text.clone())`.
    pub async fn edit<T, F, R>(
        &self,
        key: MessageKey,
        priority: Priority,
        mut make_call: F,
    ) -> Result<Edited<T>, PaceError>
    where
        F: FnMut() -> R,
        R: IntoFuture<Output = Result<T, RequestError>>,
    {
        let mut retry = false;
        loop {
            let signal = self
                .acquire(Some(key.chat), priority, Join::Edit { key, retry })
                .await?;
            if let Signal::Superseded = signal {
                return Ok(Edited::Superseded);
            }
            let answer = make_call().into_future().await;
            self.answered(Some(key.chat), signal);
            match answer {
                Err(RequestError::RetryAfter(wait)) => {
                    self.refused(Target::Chat(key.chat), wait.duration());
                    retry = true;
                }
                Ok(answer) => return Ok(Edited::Sent(answer)),
                Err(e) => return Err(PaceError::Request(e)),
            }
        }
    }

    /// A granted call came back: see [`Window`].
    fn answered(&self, chat: Option<i64>, signal: Signal) {
        if let Signal::Go(ticket) = signal {
            self.shared.lock().answered(chat, ticket, Instant::now());
            // A waiter may go sooner now.
            self.shared.wake.notify_one();
        }
    }

    /// Waits for a slot without making the call, for a caller that cannot hand its call over as
    /// a closure. The caller must make the call right away and report a 429 with
    /// [`Pacer::hold_chat`] / [`Pacer::hold_all`] itself.
    pub async fn wait_turn(
        &self,
        target: impl Into<Target>,
        priority: Priority,
    ) -> Result<(), PaceError> {
        self.acquire(target.into().chat(), priority, Join::Plain)
            .await
            .map(|_| ())
    }

    /// No call to `chat` starts for `wait` from now (a 429 for that chat said so).
    pub fn hold_chat(&self, chat: i64, wait: Duration) {
        let until = Instant::now() + wait;
        self.shared.lock().hold_chat(chat, until);
        self.shared.wake.notify_one();
    }

    /// No call at all starts for `wait` from now (Telegram asked the whole bot to wait).
    pub fn hold_all(&self, wait: Duration) {
        let until = Instant::now() + wait;
        {
            let mut st = self.shared.lock();
            st.global_hold = Some(st.global_hold.map_or(until, |h| h.max(until)));
        }
        self.shared.wake.notify_one();
    }

    pub fn stats(&self) -> PacerStats {
        let st = self.shared.lock();
        PacerStats {
            waiting: st.queue.len(),
            ..st.stats
        }
    }

    pub fn config(&self) -> PacerConfig {
        self.shared.lock().config.clone()
    }

    fn refused(&self, target: Target, wait: Duration) {
        tracing::debug!(
            ?target,
            wait_ms = wait.as_millis() as u64,
            "429: waiting as told"
        );
        self.shared.lock().stats.retried_after_429 += 1;
        match target {
            Target::Chat(chat) => self.hold_chat(chat, wait),
            Target::NoChat => self.hold_all(wait),
        }
    }

    /// Joins the line and waits for [`Signal::Go`] (or, for an edit, [`Signal::Superseded`]).
    async fn acquire(
        &self,
        chat: Option<i64>,
        priority: Priority,
        join: Join,
    ) -> Result<Signal, PaceError> {
        let shutdown = &self.shared.shutdown;
        if shutdown.is_cancelled() {
            return Err(PaceError::Shutdown);
        }
        let (slot, owner, rx) = {
            let mut st = self.shared.lock();
            let (slot, owner, rx) = match st.join(chat, priority, join) {
                Joined::Waiting { slot, owner, rx } => (slot, owner, rx),
                Joined::Superseded => return Ok(Signal::Superseded),
            };
            st.pump(Instant::now());
            (slot, owner, rx)
        };
        // Removes this caller from the line if it is dropped (cancelled) before its turn.
        let _guard = Leave {
            shared: &self.shared,
            slot,
            owner,
        };
        // The driver may be asleep until a later moment than this waiter's.
        self.shared.wake.notify_one();
        tokio::select! {
            biased;
            signal = rx => signal.map_err(|_| PaceError::Shutdown),
            _ = shutdown.cancelled() => Err(PaceError::Shutdown),
        }
    }
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the driver: a waiter joined or a hold changed.
    wake: Notify,
    shutdown: CancellationToken,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // Nothing in here panics while holding the lock; if a caller's thread did, the state is
        // still consistent (every change is made in one step).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Grants slots whose moment has come while no caller arrives to do it.
async fn drive(shared: Arc<Shared>, stop: CancellationToken) {
    loop {
        let next = shared.lock().pump(Instant::now());
        let sleep = async {
            match next {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = shared.wake.notified() => {}
            _ = sleep => {}
        }
    }
}

/// Takes a waiter out of the line when its future is dropped before its turn.
struct Leave<'a> {
    shared: &'a Shared,
    slot: Slot,
    owner: u64,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        let mut st = self.shared.lock();
        if st
            .queue
            .get(&self.slot)
            .is_some_and(|e| e.owner == self.owner)
        {
            st.remove(self.slot);
        }
    }
}

/// A waiter's place in line: priority first, then arrival.
type Slot = (Priority, u64);

enum Signal {
    /// Go ahead: the grant's ticket, to report the answer with.
    Go(u64),
    Superseded,
}

#[derive(Clone, Copy)]
enum Join {
    Plain,
    /// `retry`: this edit was refused with 429 and comes back; a newer waiting edit of the same
    /// message wins over it.
    Edit {
        key: MessageKey,
        retry: bool,
    },
}

enum Joined {
    Waiting {
        slot: Slot,
        owner: u64,
        rx: oneshot::Receiver<Signal>,
    },
    Superseded,
}

struct Entry {
    chat: Option<i64>,
    edit: Option<MessageKey>,
    /// Who waits on this place now: a newer edit takes the place over from an older one.
    owner: u64,
    tx: oneshot::Sender<Signal>,
}

/// At most `limit` calls reach Telegram in any `span`, and starts at least `spacing` apart.
///
/// A call reaches Telegram some time after its start here, at the latest when its answer comes
/// back. So each start keeps a `bound` on its arrival: its answer's moment once that is known,
/// and until then its start plus `margin`. The next call may start once fewer than `limit`
/// earlier calls could still arrive within `span` of it. Quick calls (an acknowledgement over a
/// fast link) thus cost the window almost nothing beyond `span`, while a call still in flight is
/// assumed to arrive up to `margin` late.
struct Window {
    limit: usize,
    span: Duration,
    margin: Duration,
    spacing: Duration,
    /// The starts that may still hold back a later call, oldest first (a later start may have
    /// an earlier bound: it was answered sooner).
    starts: VecDeque<Start>,
}

#[derive(Clone, Copy)]
struct Start {
    /// The grant it was (the waiter's `owner`), to find it when its answer comes.
    ticket: u64,
    at: Instant,
    bound: Instant,
}

impl Window {
    fn new(limit: u32, span: Duration, margin: Duration, spacing: Duration) -> Self {
        Window {
            limit: limit as usize,
            span,
            margin,
            spacing,
            starts: VecDeque::new(),
        }
    }

    /// The earliest moment the next call may start (`None`: any time).
    fn ready_at(&self) -> Option<Instant> {
        self.ready_at_within(self.limit)
    }

    /// The same for a call that may use only `share` (at most `limit`) of the window's calls.
    fn ready_at_within(&self, share: usize) -> Option<Instant> {
        if self.limit == 0 {
            return None;
        }
        let share = share.clamp(1, self.limit);
        let spaced = self.starts.back().map(|s| s.at + self.spacing);
        let windowed = (self.starts.len() >= share).then(|| {
            // The share-th latest possible arrival: once `span` has passed since it, fewer than
            // `share` earlier calls can still land within `span` of a new one.
            let mut bounds: Vec<Instant> = self.starts.iter().map(|s| s.bound).collect();
            bounds.sort_unstable_by(|a, b| b.cmp(a));
            bounds[share - 1] + self.span
        });
        later(spaced, windowed)
    }

    fn record(&mut self, ticket: u64, now: Instant) {
        if self.limit == 0 {
            return;
        }
        // A start that reached Telegram a whole span ago can hold back no later call (its
        // bound plus `span` is already past); every other start may still, however old it is.
        let span = self.span;
        self.starts.retain(|s| s.bound + span > now);
        self.starts.push_back(Start {
            ticket,
            at: now,
            bound: now + self.margin,
        });
    }

    /// The call of `ticket` was answered at `now`: it reached Telegram by then.
    fn answered(&mut self, ticket: u64, now: Instant) {
        if let Some(s) = self.starts.iter_mut().rev().find(|s| s.ticket == ticket) {
            s.bound = s.bound.min(now);
        }
    }

    /// Its starts no longer constrain anything.
    fn idle(&self, now: Instant) -> bool {
        self.starts.back().is_none_or(|last| {
            now.saturating_duration_since(last.at) >= self.span + self.margin + self.spacing
        })
    }
}

struct ChatLimits {
    chat: Window,
    /// Groups only.
    group: Option<Window>,
    held_until: Option<Instant>,
}

impl ChatLimits {
    /// Progress edits to a group may use a quarter of its minute's budget (5 of 20): the rest
    /// stays free for acknowledgements and files, which would otherwise wait up to a minute
    /// behind percentages. A group's jobs share one status message (`board.rs`), so five edits a
    /// minute still show every job's stage.
    fn ready_at(&self, priority: Priority) -> Option<Instant> {
        let group = self.group.as_ref().and_then(|g| match priority {
            Priority::Urgent => g.ready_at(),
            Priority::Progress => g.ready_at_within(g.limit / 4),
        });
        later(later(self.chat.ready_at(), group), self.held_until)
    }

    fn idle(&self, now: Instant) -> bool {
        self.chat.idle(now)
            && self.group.as_ref().is_none_or(|g| g.idle(now))
            && self.held_until.is_none_or(|h| h <= now)
    }
}

struct State {
    config: PacerConfig,
    next_id: u64,
    queue: BTreeMap<Slot, Entry>,
    /// The place of the waiting progress edit of each message.
    waiting_edits: HashMap<MessageKey, u64>,
    /// How many urgent edits of each message wait.
    urgent_edits: HashMap<MessageKey, usize>,
    global: Window,
    global_hold: Option<Instant>,
    chats: HashMap<i64, ChatLimits>,
    stats: PacerStats,
    grants_since_prune: u32,
}

impl State {
    fn new(config: PacerConfig) -> Self {
        let per_sec = config.global_per_sec;
        // Starts at least half a period apart: a burst after a quiet spell is spread over half a
        // second rather than sent as one volley whose arrivals would scatter.
        let spacing = if per_sec == 0 {
            Duration::ZERO
        } else {
            Duration::from_secs(1) / (2 * per_sec)
        };
        State {
            global: Window::new(per_sec, Duration::from_secs(1), config.margin, spacing),
            config,
            next_id: 0,
            queue: BTreeMap::new(),
            waiting_edits: HashMap::new(),
            urgent_edits: HashMap::new(),
            global_hold: None,
            chats: HashMap::new(),
            stats: PacerStats::default(),
            grants_since_prune: 0,
        }
    }

    fn chat_limits(&self, chat: i64) -> ChatLimits {
        let c = &self.config;
        let (limit, span) = if c.per_chat_per_sec == 0 {
            (0, Duration::ZERO)
        } else {
            let burst = c.per_chat_burst.max(1);
            (burst, Duration::from_secs(1) * burst / c.per_chat_per_sec)
        };
        ChatLimits {
            chat: Window::new(limit, span, c.margin, Duration::ZERO),
            group: (chat < 0).then(|| {
                Window::new(
                    c.per_group_per_min,
                    Duration::from_secs(60),
                    c.margin,
                    Duration::ZERO,
                )
            }),
            held_until: None,
        }
    }

    fn limits_mut(&mut self, chat: i64) -> &mut ChatLimits {
        if !self.chats.contains_key(&chat) {
            let limits = self.chat_limits(chat);
            self.chats.insert(chat, limits);
        }
        self.chats.get_mut(&chat).expect("inserted above")
    }

    fn hold_chat(&mut self, chat: i64, until: Instant) {
        let limits = self.limits_mut(chat);
        limits.held_until = Some(limits.held_until.map_or(until, |h| h.max(until)));
    }

    fn join(&mut self, chat: Option<i64>, priority: Priority, join: Join) -> Joined {
        let (tx, rx) = oneshot::channel();
        self.next_id += 1;
        let owner = self.next_id;
        let mut edit = None;
        if let Join::Edit { key, retry } = join {
            edit = Some(key);
            match priority {
                Priority::Progress => {
                    if self.urgent_edits.contains_key(&key) {
                        // The message's final text waits; a percentage after it would be stale.
                        self.stats.superseded += 1;
                        return Joined::Superseded;
                    }
                    if let Some(&seq) = self.waiting_edits.get(&key) {
                        if retry {
                            self.stats.superseded += 1;
                            return Joined::Superseded;
                        }
                        let slot = (Priority::Progress, seq);
                        let entry = self.queue.get_mut(&slot).expect("waiting edit is queued");
                        let older = std::mem::replace(&mut entry.tx, tx);
                        entry.owner = owner;
                        let _ = older.send(Signal::Superseded);
                        self.stats.superseded += 1;
                        return Joined::Waiting { slot, owner, rx };
                    }
                    self.waiting_edits.insert(key, owner);
                }
                Priority::Urgent => {
                    if let Some(seq) = self.waiting_edits.get(&key).copied() {
                        if let Some(entry) = self.remove((Priority::Progress, seq)) {
                            let _ = entry.tx.send(Signal::Superseded);
                            self.stats.superseded += 1;
                        }
                    }
                    *self.urgent_edits.entry(key).or_default() += 1;
                }
            }
        }
        let slot = (priority, owner);
        self.queue.insert(
            slot,
            Entry {
                chat,
                edit,
                owner,
                tx,
            },
        );
        Joined::Waiting { slot, owner, rx }
    }

    /// Takes a place out of the line, keeping the edit indexes in step.
    fn remove(&mut self, slot: Slot) -> Option<Entry> {
        let entry = self.queue.remove(&slot)?;
        if let Some(key) = entry.edit {
            match slot.0 {
                Priority::Progress => {
                    if self.waiting_edits.get(&key) == Some(&slot.1) {
                        self.waiting_edits.remove(&key);
                    }
                }
                Priority::Urgent => {
                    if let Some(n) = self.urgent_edits.get_mut(&key) {
                        *n -= 1;
                        if *n == 0 {
                            self.urgent_edits.remove(&key);
                        }
                    }
                }
            }
        }
        Some(entry)
    }

    /// When a waiter for `chat` may go, given the overall limit's moment `global` (the same for
    /// every waiter, so [`State::pump`] computes it once per pass rather than once per waiter).
    fn ready_at(
        &self,
        global: Option<Instant>,
        chat: Option<i64>,
        priority: Priority,
    ) -> Option<Instant> {
        let chat = chat
            .and_then(|c| self.chats.get(&c))
            .and_then(|l| l.ready_at(priority));
        later(global, chat)
    }

    /// Grants every waiter that may go at `now`, in line order, and returns the earliest moment
    /// another one may (`None`: nobody waits).
    fn pump(&mut self, now: Instant) -> Option<Instant> {
        loop {
            let mut earliest: Option<Instant> = None;
            let mut go = None;
            let global = later(self.global.ready_at(), self.global_hold);
            for (&slot, entry) in &self.queue {
                match self.ready_at(global, entry.chat, slot.0) {
                    Some(at) if at > now => {
                        earliest = Some(earliest.map_or(at, |e| e.min(at)));
                    }
                    _ => {
                        go = Some(slot);
                        break;
                    }
                }
            }
            let Some(slot) = go else {
                return earliest;
            };
            let Some(entry) = self.remove(slot) else {
                return earliest;
            };
            if entry.tx.send(Signal::Go(entry.owner)).is_ok() {
                self.record(entry.chat, entry.owner, now);
            }
        }
    }

    fn record(&mut self, chat: Option<i64>, ticket: u64, now: Instant) {
        self.stats.granted += 1;
        self.global.record(ticket, now);
        if let Some(chat) = chat {
            let limits = self.limits_mut(chat);
            limits.chat.record(ticket, now);
            if let Some(group) = &mut limits.group {
                group.record(ticket, now);
            }
        }
        self.grants_since_prune += 1;
        if self.grants_since_prune >= 1024 {
            self.grants_since_prune = 0;
            self.chats.retain(|_, l| !l.idle(now));
        }
    }
}

impl State {
    /// The call granted as `ticket` was answered: it can no longer arrive late.
    fn answered(&mut self, chat: Option<i64>, ticket: u64, now: Instant) {
        self.global.answered(ticket, now);
        if let Some(limits) = chat.and_then(|c| self.chats.get_mut(&c)) {
            limits.chat.answered(ticket, now);
            if let Some(group) = &mut limits.group {
                group.answered(ticket, now);
            }
        }
    }
}

/// The later of two optional moments (`None` is "no constraint").
fn later(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.max(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

#[cfg(test)]
mod tests {
    //! Timing tests on tokio's paused clock: time only moves when every task waits, and then
    //! straight to the next timer, so the grant times below are exact to the timer's
    //! millisecond resolution and the tests take no real time.

    use std::future::{ready, Ready};

    use teloxide::types::Seconds;

    use super::*;

    /// Records every call made: a label and its start, in milliseconds since the test began.
    #[derive(Clone)]
    struct Log {
        t0: Instant,
        calls: Arc<Mutex<Vec<(String, u64)>>>,
    }

    impl Log {
        fn new() -> Self {
            Log {
                t0: Instant::now(),
                calls: Arc::default(),
            }
        }

        /// A `make_call` that records `label` and succeeds.
        fn ok(&self, label: &str) -> impl FnMut() -> Ready<Result<(), RequestError>> {
            let (log, label) = (self.clone(), label.to_owned());
            move || {
                log.push(&label);
                ready(Ok(()))
            }
        }

        fn push(&self, label: &str) {
            let ms = (Instant::now() - self.t0).as_millis() as u64;
            self.calls.lock().unwrap().push((label.to_owned(), ms));
        }

        fn labels(&self) -> Vec<String> {
            self.calls
                .lock()
                .unwrap()
                .iter()
                .map(|c| c.0.clone())
                .collect()
        }

        fn times(&self) -> Vec<u64> {
            self.calls.lock().unwrap().iter().map(|c| c.1).collect()
        }

        fn time_of(&self, label: &str) -> u64 {
            let calls = self.calls.lock().unwrap();
            calls
                .iter()
                .find(|c| c.0 == label)
                .unwrap_or_else(|| panic!("{label} was not called: {calls:?}"))
                .1
        }
    }

    /// The timings below are worked out for a 20 ms margin, whatever the default becomes.
    fn config() -> PacerConfig {
        PacerConfig {
            margin: Duration::from_millis(20),
            ..PacerConfig::default()
        }
    }

    fn pacer() -> Pacer {
        Pacer::new(config(), CancellationToken::new())
    }

    #[test]
    fn defaults_are_telegrams_limits() {
        let c = PacerConfig::default();
        assert_eq!(
            (
                c.global_per_sec,
                c.per_chat_per_sec,
                c.per_chat_burst,
                c.per_group_per_min
            ),
            (30, 1, 2, 20)
        );
    }

    /// Lets every spawned task run until it waits (on the paused clock nothing advances).
    async fn settle() {
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
    }

    /// The most starts in any window of `span_ms` (a start at the window's end counts, as in the
    /// fake: a call exactly `span` after another is inside the strictest reading).
    fn most_in_any_window(times: &[u64], span_ms: u64) -> usize {
        let mut sorted = times.to_vec();
        sorted.sort_unstable();
        (0..sorted.len())
            .map(|i| {
                sorted[i..]
                    .iter()
                    .take_while(|&&t| t < sorted[i] + span_ms)
                    .count()
            })
            .max()
            .unwrap_or(0)
    }

    async fn join_all(handles: Vec<tokio::task::JoinHandle<()>>) {
        for h in handles {
            h.await.unwrap();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn overall_rate_stays_within_30_a_second() {
        let (p, log) = (pacer(), Log::new());
        let handles = (0..90)
            .map(|i| {
                let (p, f) = (p.clone(), log.ok(&format!("c{i}")));
                tokio::spawn(async move { p.call(1000 + i, Priority::Urgent, f).await.unwrap() })
            })
            .collect();
        join_all(handles).await;
        let times = log.times();
        assert_eq!(times.len(), 90);
        // Answered at once, so each call reached the fake by its start: 30 in any second.
        assert_eq!(most_in_any_window(&times, 999), 30, "{times:?}");
        // The first 30 are spread over half a second, not sent as one volley.
        assert!(times[29] >= 480 && times[29] < 520, "{times:?}");
        assert!(times[1] >= 16, "{times:?}");
        // And no time is wasted: 90 calls take two windows and a half.
        let last = *times.iter().max().unwrap();
        assert!(
            (2 * 1000 + 480..2 * 1000 + 520).contains(&last),
            "{times:?}"
        );
    }

    /// `telegram.pace_* = 0` (a Bot API stand-in with no limits): every call starts at once.
    #[tokio::test(start_paused = true)]
    async fn limits_of_zero_pace_nothing() {
        let config = PacerConfig {
            global_per_sec: 0,
            per_chat_per_sec: 0,
            per_group_per_min: 0,
            ..config()
        };
        let (p, log) = (Pacer::new(config, CancellationToken::new()), Log::new());
        // 100 calls, half of them to one group, the rest to one private chat.
        let handles = (0..100)
            .map(|i| {
                let (p, f) = (p.clone(), log.ok(&format!("c{i}")));
                let chat = if i % 2 == 0 { -100 } else { 7 };
                tokio::spawn(async move { p.call(chat, Priority::Urgent, f).await.unwrap() })
            })
            .collect();
        join_all(handles).await;
        let times = log.times();
        assert_eq!(times.len(), 100);
        assert!(times.iter().all(|t| *t == 0), "{times:?}");
    }

    /// The start times (ms) of 31 calls to different chats whose answers each take half a
    /// second: until its answer a call may still be on its way.
    async fn thirty_one_slow_calls(p: Pacer) -> Vec<u64> {
        let log = Log::new();
        let handles = (0..31)
            .map(|i| {
                let (p, log) = (p.clone(), log.clone());
                tokio::spawn(async move {
                    p.call(2000 + i, Priority::Urgent, || {
                        log.push(&format!("c{i}"));
                        async {
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            Ok::<(), RequestError>(())
                        }
                    })
                    .await
                    .unwrap()
                })
            })
            .collect();
        join_all(handles).await;
        log.times()
    }

    #[tokio::test(start_paused = true)]
    async fn a_call_still_in_flight_is_assumed_to_arrive_up_to_the_margin_late() {
        let times = thirty_one_slow_calls(pacer()).await;
        // The first call's answer came after its margin (20 ms), so it may have arrived as late
        // as 20 ms after its start: the 31st waits one second past that.
        assert!((1020..1025).contains(&times[30]), "{times:?}");
    }

    /// With the default margin a call whose answer takes half a second (a request slow to
    /// reach the API on a busy machine) holds its place in the window until its answer: the
    /// 31st call waits a second past the first one's answer, not past its start plus 50 ms.
    #[tokio::test(start_paused = true)]
    async fn by_default_a_slow_call_holds_its_place_until_its_answer() {
        let p = Pacer::new(PacerConfig::default(), CancellationToken::new());
        let times = thirty_one_slow_calls(p).await;
        assert!((1500..1505).contains(&times[30]), "{times:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn one_chat_gets_a_burst_of_two_then_one_a_second() {
        let (p, log) = (pacer(), Log::new());
        let handles = (0..6)
            .map(|i| {
                let (p, f) = (p.clone(), log.ok(&format!("m{i}")));
                tokio::spawn(async move { p.call(42, Priority::Urgent, f).await.unwrap() })
            })
            .collect();
        join_all(handles).await;
        let times = log.times();
        assert_eq!(log.labels(), ["m0", "m1", "m2", "m3", "m4", "m5"]);
        // Pairs 2 s apart: never a third call within a second (Telegram refuses that) nor
        // more than two in two seconds.
        // (The second is 1/60 s later: the overall limit spaces every start.)
        assert_eq!(&times[..2], [0, 17], "{times:?}");
        assert!((2000..2005).contains(&times[2]), "{times:?}");
        assert!((4015..4025).contains(&times[5]), "{times:?}");
        assert_eq!(most_in_any_window(&times, 1999), 2, "{times:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn progress_edits_leave_three_quarters_of_a_groups_minute_to_urgent_calls() {
        let (p, log) = (pacer(), Log::new());
        let group = -100_124;
        // Progress edits of 15 messages wait from the start; 15 urgent calls come half a minute
        // later.
        let mut handles = Vec::new();
        for i in 0..15 {
            let (p, f) = (p.clone(), log.ok(&format!("edit{i}")));
            handles.push(tokio::spawn(async move {
                p.edit(MessageKey::new(group, i), Priority::Progress, f)
                    .await
                    .unwrap();
            }));
        }
        tokio::time::sleep(Duration::from_secs(30)).await;
        for i in 0..15 {
            let (p, f) = (p.clone(), log.ok(&format!("urgent{i}")));
            handles.push(tokio::spawn(async move {
                p.call(group, Priority::Urgent, f).await.unwrap()
            }));
        }
        join_all(handles).await;
        let first_minute: Vec<(String, u64)> = log
            .calls
            .lock()
            .unwrap()
            .iter()
            .filter(|c| c.1 < 60_000)
            .cloned()
            .collect();
        let edits = first_minute
            .iter()
            .filter(|c| c.0.starts_with("edit"))
            .count();
        // Edits stopped at a quarter of the minute's 20; every urgent call still went within it.
        assert_eq!(edits, 5, "{first_minute:?}");
        assert_eq!(first_minute.len() - edits, 15, "{first_minute:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_group_gets_20_a_minute() {
        let (p, log) = (pacer(), Log::new());
        let group = -100_123;
        let private = 77;
        let mut handles = Vec::new();
        for i in 0..22 {
            for chat in [group, private] {
                let (p, f) = (p.clone(), log.ok(&format!("{chat}/{i}")));
                handles.push(tokio::spawn(async move {
                    p.call(chat, Priority::Urgent, f).await.unwrap()
                }));
            }
        }
        join_all(handles).await;
        let group_times: Vec<u64> = (0..22)
            .map(|i| log.time_of(&format!("{group}/{i}")))
            .collect();
        // 20 at the chat's pace (pairs every 2 s), then the minute must pass.
        assert!(group_times[19] < 20_000, "{group_times:?}");
        assert!(
            (60_000..60_010).contains(&group_times[20]),
            "{group_times:?}"
        );
        assert_eq!(most_in_any_window(&group_times, 59_999), 20);
        // A private chat is not held to the group limit.
        let private_21 = log.time_of(&format!("{private}/20"));
        assert!((20_010..20_025).contains(&private_21), "{private_21}");
    }

    #[tokio::test(start_paused = true)]
    async fn urgent_calls_go_before_waiting_progress_edits() {
        let (p, log) = (pacer(), Log::new());
        // Use up chat 5's burst so everything below has to wait for its next slot.
        p.call(5, Priority::Urgent, log.ok("first")).await.unwrap();
        p.call(5, Priority::Urgent, log.ok("second")).await.unwrap();
        let mut handles = Vec::new();
        for (label, prio) in [
            ("progress-a", Priority::Progress),
            ("progress-b", Priority::Progress),
            ("ack", Priority::Urgent),
            ("result", Priority::Urgent),
        ] {
            let (p, f) = (p.clone(), log.ok(label));
            let key = MessageKey::new(5, label.len() as i32 + 100 * handles.len() as i32);
            handles.push(tokio::spawn(async move {
                match prio {
                    Priority::Urgent => p.call(5, prio, f).await.unwrap(),
                    Priority::Progress => {
                        assert!(matches!(p.edit(key, prio, f).await, Ok(Edited::Sent(()))))
                    }
                }
            }));
            settle().await;
        }
        join_all(handles).await;
        assert_eq!(
            log.labels(),
            [
                "first",
                "second",
                "ack",
                "result",
                "progress-a",
                "progress-b"
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn urgent_goes_first_across_chats_when_the_overall_limit_binds() {
        let config = PacerConfig {
            global_per_sec: 1,
            ..config()
        };
        let (p, log) = (Pacer::new(config, CancellationToken::new()), Log::new());
        p.call(1, Priority::Urgent, log.ok("first")).await.unwrap();
        let mut handles = Vec::new();
        for (chat, label, prio) in [
            (2, "edit-2", Priority::Progress),
            (3, "edit-3", Priority::Progress),
            (4, "ack-4", Priority::Urgent),
        ] {
            let (p, f) = (p.clone(), log.ok(label));
            handles.push(tokio::spawn(async move {
                p.edit(MessageKey::new(chat, 1), prio, f).await.unwrap();
            }));
            settle().await;
        }
        join_all(handles).await;
        assert_eq!(log.labels(), ["first", "ack-4", "edit-2", "edit-3"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_newer_edit_replaces_the_waiting_one_and_keeps_its_place() {
        let (p, log) = (pacer(), Log::new());
        p.call(9, Priority::Urgent, log.ok("ack")).await.unwrap();
        p.call(9, Priority::Urgent, log.ok("other")).await.unwrap();
        let status = MessageKey::new(9, 2);
        let other = MessageKey::new(9, 3);
        let mut handles = Vec::new();
        for (key, text) in [
            (status, "10%"),
            (other, "other 10%"),
            (status, "20%"),
            (status, "30%"),
        ] {
            let (p, f) = (p.clone(), log.ok(text));
            handles.push(tokio::spawn(async move {
                match p.edit(key, Priority::Progress, f).await.unwrap() {
                    Edited::Sent(()) => "sent",
                    Edited::Superseded => "superseded",
                }
            }));
            settle().await;
        }
        let mut outcomes = Vec::new();
        for h in handles {
            outcomes.push(h.await.unwrap());
        }
        assert_eq!(outcomes, ["superseded", "sent", "superseded", "sent"]);
        // One edit per message, the latest text, and the status message kept its first place.
        assert_eq!(log.labels(), ["ack", "other", "30%", "other 10%"]);
        assert_eq!(p.stats().superseded, 2);
        assert_eq!(p.stats().waiting, 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_final_edit_discards_the_waiting_progress_edit() {
        let (p, log) = (pacer(), Log::new());
        p.call(9, Priority::Urgent, log.ok("ack")).await.unwrap();
        p.call(9, Priority::Urgent, log.ok("other")).await.unwrap();
        let key = MessageKey::new(9, 2);
        let spawn_edit = |text: &str, prio| {
            let (p, f) = (p.clone(), log.ok(text));
            tokio::spawn(async move { matches!(p.edit(key, prio, f).await, Ok(Edited::Sent(()))) })
        };
        let progress = spawn_edit("50%", Priority::Progress);
        settle().await;
        let done = spawn_edit("Done", Priority::Urgent);
        settle().await;
        let late = spawn_edit("60%", Priority::Progress);
        settle().await;
        assert!(
            !progress.await.unwrap(),
            "the waiting progress edit was sent"
        );
        assert!(done.await.unwrap());
        assert!(
            !late.await.unwrap(),
            "a progress edit after the final one was sent"
        );
        assert_eq!(log.labels(), ["ack", "other", "Done"]);
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_chat_does_not_delay_another_chat() {
        let (p, log) = (pacer(), Log::new());
        // Chat 1 is refused with a 30 s wait; chat 2 must keep its own pace meanwhile.
        let refused = Arc::new(Mutex::new(false));
        let first_try = {
            let (log, refused) = (log.clone(), refused.clone());
            move || {
                let mut r = refused.lock().unwrap();
                let answer = if *r {
                    log.push("chat1");
                    Ok(())
                } else {
                    *r = true;
                    Err(RequestError::RetryAfter(Seconds::from_seconds(30)))
                };
                ready(answer)
            }
        };
        let slow = {
            let p = p.clone();
            tokio::spawn(async move { p.call(1, Priority::Urgent, first_try).await.unwrap() })
        };
        settle().await;
        let mut handles = Vec::new();
        for i in 0..4 {
            let (p, f) = (p.clone(), log.ok(&format!("chat2-{i}")));
            handles.push(tokio::spawn(async move {
                p.call(2, Priority::Urgent, f).await.unwrap()
            }));
        }
        join_all(handles).await;
        slow.await.unwrap();
        assert_eq!(
            log.labels(),
            ["chat2-0", "chat2-1", "chat2-2", "chat2-3", "chat1"]
        );
        assert_eq!(
            log.time_of("chat2-0"),
            17,
            "right after chat 1's refused call"
        );
        let t3 = log.time_of("chat2-3");
        assert!((2015..2040).contains(&t3), "{t3}");
        assert!((30_000..30_005).contains(&log.time_of("chat1")));
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_is_waited_out_and_retried_until_sent() {
        let p = pacer();
        let t0 = Instant::now();
        let attempts = Arc::new(Mutex::new(Vec::new()));
        let call = {
            let attempts = attempts.clone();
            move || {
                let mut a = attempts.lock().unwrap();
                a.push((Instant::now() - t0).as_millis() as u64);
                ready(if a.len() < 3 {
                    Err(RequestError::RetryAfter(Seconds::from_seconds(5)))
                } else {
                    Ok("sent")
                })
            }
        };
        let answer = p.call(3, Priority::Urgent, call).await.unwrap();
        assert_eq!(answer, "sent");
        let attempts = attempts.lock().unwrap().clone();
        assert_eq!(attempts.len(), 3, "{attempts:?}");
        assert_eq!(attempts[0], 0);
        assert!((5000..5005).contains(&attempts[1]), "{attempts:?}");
        assert!((10_000..10_010).contains(&attempts[2]), "{attempts:?}");
        assert_eq!(p.stats().retried_after_429, 2);
        assert_eq!(p.stats().granted, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn other_errors_are_returned_not_retried() {
        let p = pacer();
        let mut n = 0;
        let result: Result<(), _> = p
            .call(3, Priority::Urgent, || {
                n += 1;
                ready(Err(RequestError::Api(teloxide::ApiError::BotBlocked)))
            })
            .await;
        assert!(matches!(
            result,
            Err(PaceError::Request(RequestError::Api(
                teloxide::ApiError::BotBlocked
            )))
        ));
        assert_eq!(n, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_429_without_a_chat_holds_everyone() {
        let (p, log) = (pacer(), Log::new());
        let mut refused = false;
        p.call(Target::NoChat, Priority::Urgent, || {
            let answer = if refused {
                Ok(())
            } else {
                refused = true;
                Err(RequestError::RetryAfter(Seconds::from_seconds(3)))
            };
            ready(answer)
        })
        .await
        .unwrap();
        p.call(8, Priority::Urgent, log.ok("after")).await.unwrap();
        // The retried call at 3 s, then this one 1/60 s later.
        assert!((3000..3025).contains(&log.time_of("after")));
    }

    #[tokio::test(start_paused = true)]
    async fn shutdown_ends_a_paced_wait() {
        let shutdown = CancellationToken::new();
        let p = Pacer::new(config(), shutdown.clone());
        p.hold_chat(4, Duration::from_secs(3600));
        let log = Log::new();
        let waiting = {
            let (p, f) = (p.clone(), log.ok("never"));
            tokio::spawn(async move { p.call(4, Priority::Urgent, f).await })
        };
        settle().await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        shutdown.cancel();
        let result = tokio::time::timeout(Duration::from_secs(1), waiting)
            .await
            .expect("the wait ended")
            .unwrap();
        assert!(matches!(result, Err(PaceError::Shutdown)));
        assert!(log.labels().is_empty());
        // And nothing new is started after shutdown.
        let late = p.call(5, Priority::Urgent, log.ok("late")).await;
        assert!(matches!(late, Err(PaceError::Shutdown)));
        assert!(log.labels().is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_waiter_leaves_the_line_without_using_a_slot() {
        let (p, log) = (pacer(), Log::new());
        p.call(6, Priority::Urgent, log.ok("a")).await.unwrap();
        p.call(6, Priority::Urgent, log.ok("b")).await.unwrap();
        let gave_up = tokio::time::timeout(
            Duration::from_millis(500),
            p.call(6, Priority::Urgent, log.ok("gave up")),
        )
        .await;
        assert!(gave_up.is_err());
        assert_eq!(p.stats().waiting, 0);
        p.call(6, Priority::Urgent, log.ok("c")).await.unwrap();
        p.call(6, Priority::Urgent, log.ok("d")).await.unwrap();
        assert_eq!(log.labels(), ["a", "b", "c", "d"]);
        // c and d share the pair of slots the cancelled call did not use.
        assert_eq!(log.time_of("c"), log.time_of("a") + 2000);
        assert_eq!(log.time_of("d"), log.time_of("b") + 2000);
    }
}
