//! An in-process fake of the Telegram Bot API that speaks the real wire format.
//!
//! It serves `POST /bot<token>/<method>` (method names case-insensitive, as teloxide sends
//! `SendMessage`) with JSON, form-urlencoded and multipart bodies (chunked or not, files as
//! `attach://<part>` references or as direct parts), answers with Telegram's JSON envelope and
//! real error descriptions, and records every call and every uploaded byte so tests can assert
//! what the bot did. `GET /file/bot<token>/<file_path>` serves files uploaded earlier.
//!
//! What it models, because the bot must cope with it on the real API:
//! - long-polling `getUpdates` with `offset` (confirming earlier updates) and `timeout`;
//! - per-chat message ids shared by user and bot messages, dates in unix seconds;
//! - "message is not modified" on identical edits, "message to edit/delete not found";
//! - `file_id`s for uploads, re-sends by `file_id`, "wrong file identifier" for unknown ids;
//! - 413 above a configurable upload size (Telegram's cloud API allows 50 MB by default);
//! - HTML `parse_mode` rendering (tags stripped, entities decoded, unknown tags refused);
//! - injected failures (429 with `retry_after`, 5xx, 403 blocked, arbitrary errors) and held
//!   requests, and an API that is down altogether (connection refused);
//! - Telegram's pacing, when switched on ([`FakeTelegram::start_paced`]): 429 with `retry_after`
//!   past 30 calls a second overall, the third call within a second to one chat, or 20 calls a
//!   minute to a group.
//!
//! Not modelled: MarkdownV2 parsing (texts are stored as sent), webhooks, groups' permissions,
//! media groups, inline mode. A network error in the middle of a call is a [`Failure::Hold`]
//! followed by [`FakeTelegram::go_offline`].
//!
//! ```ignore
//! let fake = FakeTelegram::start().await;          // or offline(free_port()) + go_online()
//! // give the bot fake.url() (teloxide) or fake.url_string() (config `api_url`)
//! let msg_id = fake.push_text(42, 42, "https://127.0.0.1:1234/tiny.mp4", Some("en"));
//! fake.fail_next("sendVideo", Failure::RetryAfter(1));
//! let calls = fake.wait_for(|c| c.iter().any(|c| c.is("sendVideo") && c.succeeded()), WAIT).await;
//! let video = calls.iter().rev().find(|c| c.is("sendVideo")).unwrap().file("video").unwrap();
//! assert!(video.bytes == fixture_bytes("tiny.mp4"));
//! ```

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU16, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::extract::{DefaultBodyLimit, FromRequest, Multipart, Request, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{wait_until, Gate, KillableListener};

/// A token in the shape Telegram issues; the bot's user id is the part before the colon.
pub const TEST_TOKEN: &str = "123456:TEST-token-for-the-fake-api";
pub const BOT_USERNAME: &str = "tgdl_test_bot";
pub const BOT_FIRST_NAME: &str = "tgdl test";
/// Telegram's cloud Bot API refuses uploads above 50 MB.
pub const DEFAULT_UPLOAD_LIMIT: u64 = 50 * 1024 * 1024;

const MAX_TEXT_LEN: usize = 4096;
const MAX_CAPTION_LEN: usize = 1024;
const NOT_MODIFIED: &str = "Bad Request: message is not modified: specified new message content \
                            and reply markup are exactly the same as a current content and reply \
                            markup of the message";

/// Pacing ([`FakeTelegram::set_pacing`]): calls a second overall before a 429.
pub const PACED_PER_SEC: usize = 30;
/// Pacing: calls to one chat within a second before a 429 (Telegram tolerates a burst of two).
pub const PACED_PER_CHAT_PER_SEC: usize = 2;
/// Pacing: calls to one group (negative chat id) within a minute before a 429.
pub const PACED_PER_GROUP_PER_MIN: usize = 20;

/// A failure to answer the next call of a method with, instead of handling it.
#[derive(Clone, Debug)]
pub enum Failure {
    /// 429 `Too Many Requests: retry after N` with `parameters.retry_after = N`.
    RetryAfter(u32),
    /// A 5xx status with Telegram's description for it. Note that teloxide sleeps 10 s before
    /// reading a 5xx response body.
    ServerError(u16),
    /// 403 `Forbidden: bot was blocked by the user`.
    Forbidden,
    /// 413 `Request Entity Too Large`, regardless of the upload size.
    TooLarge,
    /// 400 with this description (prefixed with `Bad Request: ` unless it already is).
    BadRequest(String),
    /// Any status and description.
    Api { status: u16, description: String },
    /// Park the request (after its body was received and recorded) until the gate is released,
    /// then handle it normally. Used to kill a bot in the middle of a call.
    Hold(Gate),
}

/// How the request body was encoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyKind {
    Empty,
    Json,
    Form,
    Multipart,
}

/// A file part of a multipart request.
#[derive(Clone, Debug)]
pub struct UploadedFile {
    /// The API parameter it was given for (`video`, `document`, `thumbnail`, ...).
    pub field: String,
    /// The multipart part name (the `<name>` of `attach://<name>`, or `field` for direct parts).
    pub part_name: String,
    pub file_name: Option<String>,
    pub content_type: Option<String>,
    /// Every byte received, unless `truncated` (the upload was over the limit).
    pub bytes: Vec<u8>,
    /// The number of bytes the client sent for this part.
    pub size: u64,
    pub truncated: bool,
    /// Sent as a `file://` path that the server read from disk (local mode, see
    /// [`FakeTelegram::set_local_mode`]) rather than in the body.
    pub by_path: Option<PathBuf>,
}

/// One recorded API call.
#[derive(Clone, Debug)]
pub struct Call {
    /// Position in [`FakeTelegram::calls`].
    pub seq: usize,
    /// The method name exactly as the client spelled it (e.g. `SendMessage`).
    pub method: String,
    pub token: String,
    pub body_kind: BodyKind,
    /// The request was sent with `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// Non-file parameters. Multipart/form text values holding JSON (numbers, objects such as
    /// `reply_parameters`) are decoded; texts and captions stay strings.
    pub params: Value,
    pub files: Vec<UploadedFile>,
    /// For `send<Media>` by an existing `file_id`: that id.
    pub resent_file_id: Option<String>,
    /// HTTP status of the answer, `None` while the call is still being handled (or held).
    pub status: Option<u16>,
    /// The JSON answer, `None` while the call is still being handled.
    pub response: Option<Value>,
    /// When the request (its whole body) was received; for benchmarks, not for assertions.
    pub received_at: Instant,
    /// When the answer was ready.
    pub answered_at: Option<Instant>,
}

impl Call {
    /// Whether this is a call of `method`, compared case-insensitively.
    pub fn is(&self, method: &str) -> bool {
        self.method.eq_ignore_ascii_case(method)
    }

    pub fn param(&self, key: &str) -> Option<&Value> {
        self.params.get(key)
    }

    pub fn param_str(&self, key: &str) -> Option<&str> {
        self.params.get(key).and_then(Value::as_str)
    }

    pub fn param_i64(&self, key: &str) -> Option<i64> {
        value_i64(self.params.get(key)?)
    }

    pub fn chat_id(&self) -> Option<i64> {
        self.param_i64("chat_id")
    }

    pub fn text(&self) -> Option<&str> {
        self.param_str("text")
    }

    pub fn caption(&self) -> Option<&str> {
        self.param_str("caption")
    }

    /// The message this call replies to (`reply_parameters.message_id` or the legacy
    /// `reply_to_message_id`).
    pub fn reply_to(&self) -> Option<i32> {
        reply_to_param(&self.params)
    }

    /// The uploaded file given for `field` (e.g. `"video"`).
    pub fn file(&self, field: &str) -> Option<&UploadedFile> {
        self.files.iter().find(|f| f.field == field)
    }

    /// The call was answered with `"ok": true`.
    pub fn succeeded(&self) -> bool {
        self.response
            .as_ref()
            .and_then(|r| r.get("ok"))
            .and_then(Value::as_bool)
            == Some(true)
    }

    /// `result` of a successful answer.
    pub fn result(&self) -> Option<&Value> {
        self.response
            .as_ref()
            .filter(|_| self.succeeded())
            .and_then(|r| r.get("result"))
    }

    /// `description` of an error answer.
    pub fn error(&self) -> Option<&str> {
        self.response
            .as_ref()
            .and_then(|r| r.get("description"))
            .and_then(Value::as_str)
    }

    /// The `file_id` the fake answered with (sent media), or the re-sent one.
    pub fn sent_file_id(&self) -> Option<String> {
        if let Some(id) = &self.resent_file_id {
            return Some(id.clone());
        }
        let result = self.result()?;
        ["video", "audio", "document", "animation", "voice"]
            .iter()
            .find_map(|k| result.get(k)?.get("file_id")?.as_str().map(str::to_owned))
            .or_else(|| {
                let sizes = result.get("photo")?.as_array()?;
                sizes.last()?.get("file_id")?.as_str().map(str::to_owned)
            })
    }
}

/// A message in a chat as the fake currently holds it (after edits and deletions).
#[derive(Clone, Debug)]
pub struct SentMessage {
    pub chat_id: i64,
    pub message_id: i32,
    pub from_bot: bool,
    /// `text`, `video`, `audio`, `document`, `photo`, `animation` or `voice`.
    pub kind: &'static str,
    /// Current text (HTML rendered to plain text, as Telegram does).
    pub text: Option<String>,
    pub caption: Option<String>,
    pub file_id: Option<String>,
    pub reply_to: Option<i32>,
    pub reply_markup: Option<Value>,
    pub deleted: bool,
    /// Every text (or caption) the message has had, oldest first.
    pub history: Vec<String>,
    /// The Message object as the API last returned it.
    pub json: Value,
}

impl SentMessage {
    /// The text, or for media the caption.
    pub fn body(&self) -> Option<&str> {
        self.text.as_deref().or(self.caption.as_deref())
    }
}

/// A user message to push as an update. Built with [`IncomingMessage::new`] and its setters.
#[derive(Clone, Debug)]
pub struct IncomingMessage {
    pub chat_id: i64,
    pub user_id: u64,
    pub text: String,
    pub language_code: Option<String>,
    /// `None`: generated like Telegram does (`bot_command` for a leading command, `url` for
    /// http(s) links). `Some`: exactly these.
    pub entities: Option<Vec<Value>>,
    pub first_name: String,
    pub username: Option<String>,
    pub reply_to: Option<i32>,
}

impl IncomingMessage {
    pub fn new(chat_id: i64, user_id: u64, text: &str) -> Self {
        Self {
            chat_id,
            user_id,
            text: text.to_owned(),
            language_code: None,
            entities: None,
            first_name: format!("User{user_id}"),
            username: Some(format!("user{user_id}")),
            reply_to: None,
        }
    }

    pub fn lang(mut self, code: &str) -> Self {
        self.language_code = Some(code.to_owned());
        self
    }

    pub fn entities(mut self, entities: Vec<Value>) -> Self {
        self.entities = Some(entities);
        self
    }

    pub fn first_name(mut self, name: &str) -> Self {
        self.first_name = name.to_owned();
        self
    }

    pub fn username(mut self, username: Option<&str>) -> Self {
        self.username = username.map(str::to_owned);
        self
    }

    pub fn reply_to(mut self, message_id: i32) -> Self {
        self.reply_to = Some(message_id);
        self
    }
}

/// Offset and length of `needle` in `text` in UTF-16 code units, as Telegram counts them.
/// Panics when `needle` is not in `text`.
pub fn utf16_span(text: &str, needle: &str) -> (usize, usize) {
    let start = text
        .find(needle)
        .unwrap_or_else(|| panic!("{needle:?} does not occur in {text:?}"));
    (
        text[..start].encode_utf16().count(),
        needle.encode_utf16().count(),
    )
}

/// A `url` entity covering `needle` in `text`.
pub fn url_entity(text: &str, needle: &str) -> Value {
    let (offset, length) = utf16_span(text, needle);
    json!({"type": "url", "offset": offset, "length": length})
}

/// A `text_link` entity covering `needle` in `text`, pointing at `url`.
pub fn text_link_entity(text: &str, needle: &str, url: &str) -> Value {
    let (offset, length) = utf16_span(text, needle);
    json!({"type": "text_link", "offset": offset, "length": length, "url": url})
}

/// The entities Telegram would attach to `text` typed by a user: a `bot_command` for a leading
/// `/command` and a `url` for every whitespace-separated http(s) link (trailing punctuation
/// excluded, as Telegram's link detection does).
pub fn auto_entities(text: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut byte = 0;
    for (i, word) in text.split_inclusive(char::is_whitespace).enumerate() {
        let token = word.trim_end_matches(char::is_whitespace);
        let offset = text[..byte].encode_utf16().count();
        if i == 0 && token.starts_with('/') && token.len() > 1 {
            let length = token.encode_utf16().count();
            out.push(json!({"type": "bot_command", "offset": offset, "length": length}));
        } else {
            let lower = token.to_ascii_lowercase();
            if lower.starts_with("http://") || lower.starts_with("https://") {
                let link = token.trim_end_matches(['.', ',', ';', ':', '!', '?', ')']);
                let length = link.encode_utf16().count();
                out.push(json!({"type": "url", "offset": offset, "length": length}));
            }
        }
        byte += word.len();
    }
    out
}

struct PendingUpdate {
    id: i64,
    json: Value,
}

struct StoredFile {
    file_id: String,
    kind: &'static str,
    file_path: String,
    bytes: Arc<Vec<u8>>,
    /// The object returned under the message's media key (`video`, `audio`, ...).
    meta: Value,
}

#[derive(Clone)]
struct UserInfo {
    first_name: String,
    username: Option<String>,
    language_code: Option<String>,
}

struct FakeState {
    calls: Vec<Call>,
    updates: VecDeque<PendingUpdate>,
    next_update_id: i64,
    /// Updates returned by some `getUpdates` answer so far (the highest update id).
    delivered_upto: i64,
    next_message_id: HashMap<i64, i32>,
    messages: HashMap<(i64, i32), SentMessage>,
    users: HashMap<u64, UserInfo>,
    failures: HashMap<String, VecDeque<Failure>>,
    upload_limit: Option<u64>,
    /// `telegram-bot-api --local`: `file://` paths are read from disk.
    local_mode: bool,
    files: HashMap<String, StoredFile>,
    next_file: u64,
    next_callback: u64,
    commands: Value,
    required_token: Option<String>,
    /// `Some` while pacing is on.
    pacing: Option<Pacing>,
    /// 429s answered by the pacing (not injected ones).
    too_many: usize,
    /// Added to the real clock for pacing decisions ([`FakeTelegram::shift_pacing_clock`]).
    pacing_offset: Duration,
    /// Called when a `getUpdates` offset confirms updates ([`FakeTelegram::on_confirm`]).
    on_confirm: Option<ConfirmHook>,
}

/// See [`FakeTelegram::on_confirm`].
pub type ConfirmHook = Arc<dyn Fn(i64) + Send + Sync>;

impl Default for FakeState {
    fn default() -> Self {
        Self {
            calls: Vec::new(),
            updates: VecDeque::new(),
            next_update_id: 1,
            delivered_upto: 0,
            next_message_id: HashMap::new(),
            messages: HashMap::new(),
            users: HashMap::new(),
            failures: HashMap::new(),
            upload_limit: Some(DEFAULT_UPLOAD_LIMIT),
            local_mode: false,
            files: HashMap::new(),
            next_file: 1,
            next_callback: 1,
            commands: json!([]),
            on_confirm: None,
            required_token: None,
            pacing: None,
            too_many: 0,
            pacing_offset: Duration::ZERO,
        }
    }
}

struct Inner {
    state: Mutex<FakeState>,
    /// Fired on every change: a call recorded or answered, an update pushed or confirmed.
    changed: Notify,
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, FakeState> {
        // A panicking test thread must not turn every later assertion into a poison error.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct Running {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

#[derive(Clone)]
struct App {
    inner: Arc<Inner>,
    shutdown: CancellationToken,
}

/// The fake Bot API. Dropping it stops the server.
pub struct FakeTelegram {
    inner: Arc<Inner>,
    /// The port served on; chosen by the OS when started with port 0, then kept for restarts.
    port: AtomicU16,
    server: Mutex<Option<Running>>,
}

impl Drop for FakeTelegram {
    fn drop(&mut self) {
        if let Some(running) = self.server.lock().unwrap_or_else(|e| e.into_inner()).take() {
            running.shutdown.cancel();
            running.task.abort();
        }
    }
}

impl FakeTelegram {
    /// Starts on a free loopback port.
    pub async fn start() -> Self {
        let fake = Self::offline(0);
        fake.bind().await;
        fake
    }

    /// Starts on `port` (e.g. one from [`super::free_port`] that a bot was configured with).
    pub async fn start_on(port: u16) -> Self {
        let fake = Self::offline(port);
        fake.bind().await;
        fake
    }

    /// A fake that is not listening yet: connections to `port` are refused until
    /// [`FakeTelegram::go_online`]. For a bot started before the API is reachable.
    pub fn offline(port: u16) -> Self {
        Self {
            inner: Arc::new(Inner {
                state: Mutex::new(FakeState::default()),
                changed: Notify::new(),
            }),
            port: AtomicU16::new(port),
            server: Mutex::new(None),
        }
    }

    async fn bind(&self) {
        let port = self.port();
        let listener = TcpListener::bind(("127.0.0.1", port))
            .await
            .unwrap_or_else(|e| panic!("fake Telegram: binding 127.0.0.1:{port}: {e}"));
        self.port.store(
            listener.local_addr().expect("local_addr").port(),
            Ordering::SeqCst,
        );
        let shutdown = CancellationToken::new();
        let app = App {
            inner: self.inner.clone(),
            shutdown: shutdown.clone(),
        };
        let router = Router::new()
            .fallback(handle)
            // Uploads are limited by the fake's own configurable limit, not axum's 2 MB default.
            .layer(DefaultBodyLimit::disable())
            .with_state(app);
        let listener = KillableListener {
            inner: listener,
            shutdown: shutdown.clone(),
        };
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        *self.server.lock().unwrap() = Some(Running { shutdown, task });
    }

    /// Stops listening and severs every open connection (pooled keep-alive ones and long polls
    /// included): the API becomes unreachable. Recorded state is kept.
    pub async fn go_offline(&self) {
        let running = self.server.lock().unwrap().take();
        if let Some(running) = running {
            running.shutdown.cancel();
            running.task.abort();
            // Awaiting the aborted task guarantees the listening socket is closed on return.
            let _ = running.task.await;
        }
    }

    /// Listens again on the same port (or for the first time, after [`FakeTelegram::offline`]).
    pub async fn go_online(&self) {
        if self.is_online() {
            return;
        }
        assert_ne!(
            self.port(),
            0,
            "go_online needs a fixed port: use FakeTelegram::offline(free_port())"
        );
        self.bind().await;
    }

    pub fn is_online(&self) -> bool {
        self.server.lock().unwrap().is_some()
    }

    pub fn port(&self) -> u16 {
        self.port.load(Ordering::SeqCst)
    }

    /// The base URL to configure the bot with (`api_url`), e.g. `http://127.0.0.1:41234/`.
    pub fn url(&self) -> reqwest::Url {
        reqwest::Url::parse(&self.url_string()).expect("valid url")
    }

    pub fn url_string(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port())
    }

    /// A teloxide bot using [`TEST_TOKEN`] against this fake (teloxide's default HTTP client).
    pub fn bot(&self) -> teloxide::Bot {
        teloxide::Bot::new(TEST_TOKEN).set_api_url(self.url())
    }

    /// Answer calls with a token other than `token` with 401 Unauthorized, as Telegram does.
    pub fn require_token(&self, token: &str) {
        self.inner.lock().required_token = Some(token.to_owned());
    }

    /// Uploads whose files add up to more than `limit` bytes get 413 Request Entity Too Large.
    /// `None` accepts any size. Default: [`DEFAULT_UPLOAD_LIMIT`].
    pub fn set_upload_limit(&self, limit: Option<u64>) {
        self.inner.lock().upload_limit = limit;
    }

    /// Act as a `telegram-bot-api --local` server: a media parameter given as a `file://` URL is
    /// read from this machine's disk when the call is handled (after any [`Failure::Hold`]), as
    /// the real server does, and recorded as an upload with [`UploadedFile::by_path`]. A path
    /// that cannot be read is a 400. Off (the default), a `file://` URL is refused as Telegram's
    /// own server refuses it.
    pub fn set_local_mode(&self, on: bool) {
        self.inner.lock().local_mode = on;
    }

    /// Answers the next call of `method` (case-insensitive) with `failure`. Failures queue up:
    /// two `fail_next` calls fail the next two calls.
    pub fn fail_next(&self, method: &str, failure: Failure) {
        self.fail_times(method, failure, 1);
    }

    /// Answers the next `n` calls of `method` with `failure`.
    pub fn fail_times(&self, method: &str, failure: Failure, n: usize) {
        let mut st = self.inner.lock();
        let queue = st.failures.entry(method.to_ascii_lowercase()).or_default();
        queue.extend(std::iter::repeat_n(failure, n));
    }

    /// Parks the next call of `method` until the returned gate is released.
    pub fn hold_next(&self, method: &str) -> Gate {
        let gate = Gate::new();
        self.fail_next(method, Failure::Hold(gate.clone()));
        gate
    }

    /// Starts on a free loopback port with Telegram's pacing on (see [`FakeTelegram::set_pacing`]).
    pub async fn start_paced() -> Self {
        let fake = Self::start().await;
        fake.set_pacing(true);
        fake
    }

    /// Switches Telegram's pacing on or off (off by default). While on, a call is answered with
    /// 429 `Too Many Requests: retry after N` (and `parameters.retry_after = N`, N the whole
    /// seconds until it would have been accepted, at least 1) instead of being handled when it
    /// would be:
    /// - more than [`PACED_PER_SEC`] calls started within the last second overall,
    /// - more than [`PACED_PER_CHAT_PER_SEC`] to its `chat_id` within the last second,
    /// - more than [`PACED_PER_GROUP_PER_MIN`] to its `chat_id`, if negative (a group), within
    ///   the last minute.
    ///
    /// Only accepted calls count toward the limits, timed when their request began (an upload's
    /// body can take long to arrive; a client's pacing times the start too). Calls without a
    /// numeric `chat_id` count toward the overall limit only. `getUpdates` is neither counted
    /// nor refused: it is a long poll the bot keeps open, not a message, and Telegram's limits
    /// are on what the bot sends. A paced refusal comes before any injected failure, which stays
    /// queued for the next call. Switching on starts with empty windows; switching off keeps
    /// [`FakeTelegram::too_many_count`].
    pub fn set_pacing(&self, on: bool) {
        self.inner.lock().pacing = on.then(Pacing::default);
    }

    /// How many calls the pacing answered with 429 so far (failures injected with
    /// [`Failure::RetryAfter`] are not counted).
    pub fn too_many_count(&self) -> usize {
        self.inner.lock().too_many
    }

    /// Moves the pacing clock forward as if `by` had passed, so a test of the per-minute limit
    /// need not sleep for a minute. Only pacing decisions see it (call timestamps do not).
    pub fn shift_pacing_clock(&self, by: Duration) {
        self.inner.lock().pacing_offset += by;
    }

    /// Calls `hook(offset)` whenever a `getUpdates` offset confirms at least one update, before
    /// that call is answered: the moment Telegram forgets them. A crash test kills the bot here.
    pub fn on_confirm(&self, hook: impl Fn(i64) + Send + Sync + 'static) {
        self.inner.lock().on_confirm = Some(Arc::new(hook));
    }

    /// Drops every queued failure and hold that has not been used yet.
    pub fn clear_failures(&self) {
        self.inner.lock().failures.clear();
    }

    /// Queues a text message from a user; returns its message id. Entities are generated as
    /// Telegram does (see [`auto_entities`]). A positive `chat_id` is a private chat.
    pub fn push_text(
        &self,
        chat_id: i64,
        user_id: u64,
        text: &str,
        language_code: Option<&str>,
    ) -> i32 {
        let mut msg = IncomingMessage::new(chat_id, user_id, text);
        msg.language_code = language_code.map(str::to_owned);
        self.push_message(msg)
    }

    /// Like [`FakeTelegram::push_text`] with exactly these entities (see [`url_entity`],
    /// [`text_link_entity`]).
    pub fn push_text_with_entities(
        &self,
        chat_id: i64,
        user_id: u64,
        text: &str,
        entities: Vec<Value>,
        language_code: Option<&str>,
    ) -> i32 {
        let mut msg = IncomingMessage::new(chat_id, user_id, text).entities(entities);
        msg.language_code = language_code.map(str::to_owned);
        self.push_message(msg)
    }

    /// Queues a user message built with [`IncomingMessage`]; returns its message id.
    pub fn push_message(&self, msg: IncomingMessage) -> i32 {
        let mut st = self.inner.lock();
        let user = UserInfo {
            first_name: msg.first_name.clone(),
            username: msg.username.clone(),
            language_code: msg.language_code.clone(),
        };
        st.users.insert(msg.user_id, user.clone());
        let message_id = st.next_message_id(msg.chat_id);
        let entities = msg
            .entities
            .clone()
            .unwrap_or_else(|| auto_entities(&msg.text));
        let mut m = Map::new();
        m.insert("message_id".into(), json!(message_id));
        m.insert("from".into(), user_json(msg.user_id, &user));
        m.insert("chat".into(), st.chat_json(msg.chat_id));
        m.insert("date".into(), json!(now_secs()));
        m.insert("text".into(), json!(msg.text));
        if !entities.is_empty() {
            m.insert("entities".into(), Value::Array(entities));
        }
        if let Some(reply) = msg.reply_to.and_then(|id| st.reply_json(msg.chat_id, id)) {
            m.insert("reply_to_message".into(), reply);
        }
        let json = Value::Object(m);
        st.messages.insert(
            (msg.chat_id, message_id),
            SentMessage {
                chat_id: msg.chat_id,
                message_id,
                from_bot: false,
                kind: "text",
                text: Some(msg.text.clone()),
                caption: None,
                file_id: None,
                reply_to: msg.reply_to,
                reply_markup: None,
                deleted: false,
                history: vec![msg.text.clone()],
                json: json.clone(),
            },
        );
        st.push_update("message", json);
        drop(st);
        self.inner.changed.notify_waiters();
        message_id
    }

    /// Queues a callback query (an inline button press) on a message; returns the query id.
    pub fn push_callback(&self, chat_id: i64, user_id: u64, message_id: i32, data: &str) -> String {
        let mut st = self.inner.lock();
        let id = format!("cbq-{}", st.next_callback);
        st.next_callback += 1;
        let user = st.users.get(&user_id).cloned().unwrap_or_else(|| UserInfo {
            first_name: format!("User{user_id}"),
            username: None,
            language_code: None,
        });
        // An unknown message is delivered as Telegram's "inaccessible message" (date 0).
        let message = st
            .messages
            .get(&(chat_id, message_id))
            .filter(|m| !m.deleted)
            .map(|m| m.json.clone())
            .unwrap_or_else(
                || json!({"chat": st.chat_json(chat_id), "message_id": message_id, "date": 0}),
            );
        let cq = json!({
            "id": id,
            "from": user_json(user_id, &user),
            "message": message,
            "chat_instance": format!("ci-{chat_id}"),
            "data": data,
        });
        st.push_update("callback_query", cq);
        drop(st);
        self.inner.changed.notify_waiters();
        id
    }

    /// Queues a raw update: `{"<kind>": payload}` gets the next `update_id`. Returns it.
    pub fn push_raw_update(&self, kind: &str, payload: Value) -> i64 {
        let id = self.inner.lock().push_update(kind, payload);
        self.inner.changed.notify_waiters();
        id
    }

    /// Updates not yet confirmed by a `getUpdates` with a higher `offset`.
    pub fn pending_updates(&self) -> usize {
        self.inner.lock().updates.len()
    }

    /// Waits until every pushed update has been confirmed by the bot (it polled past them).
    pub async fn wait_updates_confirmed(&self, timeout: Duration) -> bool {
        wait_until(&self.inner.changed, || self.pending_updates() == 0, timeout).await
    }

    /// Every call so far, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        self.inner.lock().calls.clone()
    }

    /// Calls of `method` (case-insensitive), in arrival order.
    pub fn calls_to(&self, method: &str) -> Vec<Call> {
        self.inner
            .lock()
            .calls
            .iter()
            .filter(|c| c.is(method))
            .cloned()
            .collect()
    }

    pub fn count(&self, method: &str) -> usize {
        self.inner
            .lock()
            .calls
            .iter()
            .filter(|c| c.is(method))
            .count()
    }

    /// Waits until `pred` holds over the recorded calls and returns them; panics after
    /// `timeout` listing the calls seen, so a failing test says what the bot did instead.
    pub async fn wait_for(
        &self,
        pred: impl FnMut(&[Call]) -> bool,
        timeout: Duration,
    ) -> Vec<Call> {
        match self.try_wait_for(pred, timeout).await {
            Some(calls) => calls,
            None => panic!(
                "fake Telegram: condition not met within {timeout:?}; calls:\n{}",
                self.describe_calls()
            ),
        }
    }

    /// Waits until `n` calls of `method` have succeeded; whether they did in time.
    pub async fn wait_succeeded(&self, method: &str, n: usize, timeout: Duration) -> bool {
        self.try_wait_for(
            |calls| {
                calls
                    .iter()
                    .filter(|c| c.is(method) && c.succeeded())
                    .count()
                    >= n
            },
            timeout,
        )
        .await
        .is_some()
    }

    /// Like [`FakeTelegram::wait_for`] but returns `None` on timeout.
    pub async fn try_wait_for(
        &self,
        pred: impl FnMut(&[Call]) -> bool,
        timeout: Duration,
    ) -> Option<Vec<Call>> {
        let (notify, lock) = (&self.inner.changed, || self.inner.lock());
        super::wait_over(notify, lock, |s| &s.calls, pred, timeout).await
    }

    /// Waits for the `n`th answered call of `method` and returns the first `n` of them.
    pub async fn wait_for_calls(&self, method: &str, n: usize, timeout: Duration) -> Vec<Call> {
        let answered = |c: &Call| c.is(method) && c.status.is_some();
        self.wait_for(
            |calls| calls.iter().filter(|c| answered(c)).count() >= n,
            timeout,
        )
        .await
        .into_iter()
        .filter(answered)
        .take(n)
        .collect()
    }

    /// Waits for the first answered call of `method` and returns it.
    pub async fn wait_for_call(&self, method: &str, timeout: Duration) -> Call {
        self.wait_for_calls(method, 1, timeout).await.remove(0)
    }

    /// Messages the bot sent to `chat_id` (deleted ones included, flagged), oldest first, with
    /// their current text after edits.
    pub fn sent_messages(&self, chat_id: i64) -> Vec<SentMessage> {
        self.chat_messages(chat_id)
            .into_iter()
            .filter(|m| m.from_bot)
            .collect()
    }

    /// Messages the bot sent to `chat_id` that are still there.
    pub fn visible_messages(&self, chat_id: i64) -> Vec<SentMessage> {
        self.sent_messages(chat_id)
            .into_iter()
            .filter(|m| !m.deleted)
            .collect()
    }

    /// Every message of the chat, user and bot, oldest first.
    pub fn chat_messages(&self, chat_id: i64) -> Vec<SentMessage> {
        let st = self.inner.lock();
        let mut out: Vec<SentMessage> = st
            .messages
            .values()
            .filter(|m| m.chat_id == chat_id)
            .cloned()
            .collect();
        out.sort_by_key(|m| m.message_id);
        out
    }

    pub fn message(&self, chat_id: i64, message_id: i32) -> Option<SentMessage> {
        self.inner
            .lock()
            .messages
            .get(&(chat_id, message_id))
            .cloned()
    }

    /// Waits until `pred` holds over the bot's messages in `chat_id` and returns them.
    pub async fn wait_for_messages(
        &self,
        chat_id: i64,
        mut pred: impl FnMut(&[SentMessage]) -> bool,
        timeout: Duration,
    ) -> Vec<SentMessage> {
        let met = wait_until(
            &self.inner.changed,
            || pred(&self.sent_messages(chat_id)),
            timeout,
        )
        .await;
        let msgs = self.sent_messages(chat_id);
        assert!(
            met,
            "fake Telegram: messages in chat {chat_id} did not match within {timeout:?}: {msgs:#?}"
        );
        msgs
    }

    /// The bytes of a file uploaded earlier, by the `file_id` the fake gave it.
    pub fn file_bytes(&self, file_id: &str) -> Option<Vec<u8>> {
        self.inner
            .lock()
            .files
            .get(file_id)
            .map(|f| f.bytes.as_ref().clone())
    }

    /// Makes `file_id` known as an earlier upload of `kind` (`video`, `audio`, `document`, ...)
    /// with these bytes, e.g. for a cache entry written by an earlier run.
    pub fn register_file(&self, file_id: &str, kind: &str, bytes: Vec<u8>) {
        let kind = media_kind(kind).unwrap_or_else(|| panic!("unknown media kind {kind:?}"));
        let mut st = self.inner.lock();
        let n = st.next_file;
        st.next_file += 1;
        let meta = json!({"file_id": file_id, "file_unique_id": format!("uniq-{n}"), "file_size": bytes.len()});
        st.files.insert(
            file_id.to_owned(),
            StoredFile {
                file_id: file_id.to_owned(),
                kind,
                file_path: format!("{kind}s/file_{n}"),
                bytes: Arc::new(bytes),
                meta,
            },
        );
    }

    /// A one-line-per-call summary, for failure messages.
    pub fn describe_calls(&self) -> String {
        let st = self.inner.lock();
        st.calls
            .iter()
            .map(|c| {
                let mut params = c.params.to_string();
                if params.len() > 300 {
                    let mut cut = 300;
                    while !params.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    params.truncate(cut);
                    params.push('…');
                }
                let files: Vec<String> = c
                    .files
                    .iter()
                    .map(|f| format!("{}={}B", f.field, f.size))
                    .collect();
                format!(
                    "  #{} {} {:?} {} files[{}] -> {}",
                    c.seq,
                    c.method,
                    c.status,
                    params,
                    files.join(","),
                    c.error().unwrap_or(if c.succeeded() { "ok" } else { "" })
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Start times of the calls the pacing accepted, on the pacing clock.
#[derive(Default)]
struct Pacing {
    all: Vec<Instant>,
    chats: HashMap<i64, Vec<Instant>>,
}

/// How long until a call at `at` would leave fewer than `limit` calls of `log` in the window
/// `(at - window, at]`; zero if it already does.
fn pacing_wait(log: &[Instant], at: Instant, window: Duration, limit: usize) -> Duration {
    let mut inside: Vec<Instant> = log
        .iter()
        .copied()
        .filter(|&t| t <= at && at.duration_since(t) < window)
        .collect();
    if inside.len() < limit {
        return Duration::ZERO;
    }
    inside.sort_unstable();
    // Once the oldest `len - limit + 1` calls have left the window, there is room.
    inside[inside.len() - limit] + window - at
}

impl FakeState {
    /// Telegram's pacing for a call that began at `started`: records it and returns `Ok`, or
    /// returns the `retry_after` seconds to refuse it with (and counts the refusal).
    fn pace(&mut self, started: Instant, chat_id: Option<i64>) -> Result<(), u32> {
        let at = started + self.pacing_offset;
        let Some(pacing) = &mut self.pacing else {
            return Ok(());
        };
        const SECOND: Duration = Duration::from_secs(1);
        const MINUTE: Duration = Duration::from_secs(60);
        let mut wait = pacing_wait(&pacing.all, at, SECOND, PACED_PER_SEC);
        if let Some(chat) = chat_id {
            let log = pacing.chats.get(&chat).map(Vec::as_slice).unwrap_or(&[]);
            wait = wait.max(pacing_wait(log, at, SECOND, PACED_PER_CHAT_PER_SEC));
            if chat < 0 {
                wait = wait.max(pacing_wait(log, at, MINUTE, PACED_PER_GROUP_PER_MIN));
            }
        }
        if !wait.is_zero() {
            self.too_many += 1;
            // Telegram answers whole seconds, rounded up.
            let secs = wait.as_nanos().div_ceil(1_000_000_000).max(1);
            return Err(u32::try_from(secs).unwrap_or(u32::MAX));
        }
        // Nothing older than a minute can matter again (calls arrive at most slightly out of
        // order), so the logs stay short.
        let recent = |t: &Instant| at.saturating_duration_since(*t) < MINUTE;
        pacing
            .all
            .retain(|t| at.saturating_duration_since(*t) < 2 * SECOND);
        pacing.all.push(at);
        if let Some(chat) = chat_id {
            let log = pacing.chats.entry(chat).or_default();
            log.retain(recent);
            log.push(at);
        }
        Ok(())
    }

    fn next_message_id(&mut self, chat_id: i64) -> i32 {
        let next = self.next_message_id.entry(chat_id).or_insert(1);
        let id = *next;
        *next += 1;
        id
    }

    fn push_update(&mut self, kind: &str, payload: Value) -> i64 {
        let id = self.next_update_id;
        self.next_update_id += 1;
        let mut obj = Map::new();
        obj.insert("update_id".into(), json!(id));
        obj.insert(kind.to_owned(), payload);
        self.updates.push_back(PendingUpdate {
            id,
            json: Value::Object(obj),
        });
        id
    }

    fn chat_json(&self, chat_id: i64) -> Value {
        if chat_id > 0 {
            let user = self.users.get(&(chat_id as u64));
            let mut chat = json!({
                "id": chat_id,
                "type": "private",
                "first_name": user.map(|u| u.first_name.clone()).unwrap_or_else(|| format!("User{chat_id}")),
            });
            if let Some(username) = user.and_then(|u| u.username.clone()) {
                chat["username"] = json!(username);
            }
            chat
        } else {
            json!({"id": chat_id, "type": "supergroup", "title": format!("Group {chat_id}")})
        }
    }

    /// The message a reply points at, as Telegram embeds it (one level, no nested reply).
    fn reply_json(&self, chat_id: i64, message_id: i32) -> Option<Value> {
        let m = self
            .messages
            .get(&(chat_id, message_id))
            .filter(|m| !m.deleted)?;
        let mut json = m.json.clone();
        if let Some(obj) = json.as_object_mut() {
            obj.remove("reply_to_message");
        }
        Some(json)
    }
}

fn user_json(user_id: u64, user: &UserInfo) -> Value {
    let mut u = json!({"id": user_id, "is_bot": false, "first_name": user.first_name});
    if let Some(username) = &user.username {
        u["username"] = json!(username);
    }
    if let Some(lang) = &user.language_code {
        u["language_code"] = json!(lang);
    }
    u
}

fn bot_user_json(token: &str) -> Value {
    let id: u64 = token
        .split(':')
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    json!({"id": id, "is_bot": true, "first_name": BOT_FIRST_NAME, "username": BOT_USERNAME})
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn value_i64(v: &Value) -> Option<i64> {
    v.as_i64().or_else(|| v.as_str()?.trim().parse().ok())
}

fn reply_to_param(params: &Value) -> Option<i32> {
    params
        .get("reply_parameters")
        .and_then(|r| r.get("message_id"))
        .or_else(|| params.get("reply_to_message_id"))
        .and_then(value_i64)
        .and_then(|id| i32::try_from(id).ok())
}

/// Multipart and form values are strings on the wire; these keep their string type even when
/// they happen to look like JSON (a caption "123" is text, a file_id is opaque).
const STRING_PARAMS: &[&str] = &[
    "text",
    "caption",
    "title",
    "performer",
    "data",
    "description",
    "short_description",
    "name",
    "query",
    "url",
    "file_id",
    "video",
    "audio",
    "document",
    "photo",
    "animation",
    "voice",
    "thumbnail",
    "cover",
    "callback_query_id",
    "inline_message_id",
    "business_connection_id",
];

fn decode_text_param(key: &str, value: String) -> Value {
    if STRING_PARAMS.contains(&key) {
        return Value::String(value);
    }
    match serde_json::from_str::<Value>(&value) {
        Ok(v @ (Value::Number(_) | Value::Bool(_) | Value::Object(_) | Value::Array(_))) => v,
        _ => Value::String(value),
    }
}

/// The API parameter holding the file of a `send<Media>` method, and the message key of its kind.
fn media_method(method: &str) -> Option<(&'static str, &'static str)> {
    Some(match method {
        "sendvideo" => ("video", "video"),
        "sendaudio" => ("audio", "audio"),
        "senddocument" => ("document", "document"),
        "sendphoto" => ("photo", "photo"),
        "sendanimation" => ("animation", "animation"),
        "sendvoice" => ("voice", "voice"),
        _ => return None,
    })
}

fn media_kind(kind: &str) -> Option<&'static str> {
    ["video", "audio", "document", "photo", "animation", "voice"]
        .into_iter()
        .find(|k| *k == kind)
}

fn mime_for(file_name: Option<&str>) -> &'static str {
    let ext = file_name
        .and_then(|n| n.rsplit_once('.'))
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "mp4" | "m4v" => "video/mp4",
        "webm" => "video/webm",
        "mkv" => "video/x-matroska",
        "m4a" => "audio/mp4",
        "mp3" => "audio/mpeg",
        "ogg" | "opus" => "audio/ogg",
        "jpg" | "jpeg" => "image/jpeg",
        "png" => "image/png",
        _ => "application/octet-stream",
    }
}

/// Renders `text` the way Telegram stores it for `parse_mode`: HTML tags stripped and entities
/// decoded; unsupported or unclosed tags are refused with Telegram's "can't parse entities".
fn render(text: &str, parse_mode: Option<&str>) -> Result<String, String> {
    if !parse_mode.is_some_and(|m| m.eq_ignore_ascii_case("html")) {
        return Ok(text.to_owned());
    }
    const TAGS: &[&str] = &[
        "b",
        "strong",
        "i",
        "em",
        "u",
        "ins",
        "s",
        "strike",
        "del",
        "span",
        "tg-spoiler",
        "a",
        "code",
        "pre",
        "blockquote",
        "tg-emoji",
        "br",
    ];
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    let mut offset = 0;
    while let Some(pos) = rest.find(['<', '&']) {
        out.push_str(&rest[..pos]);
        let at = offset + pos;
        let tail = &rest[pos..];
        if tail.starts_with('<') {
            let Some(end) = tail.find('>') else {
                return Err(format!(
                    "Bad Request: can't parse entities: Unclosed start tag at byte offset {at}"
                ));
            };
            let inner = &tail[1..end];
            let name: String = inner
                .trim_start_matches('/')
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect::<String>()
                .to_ascii_lowercase();
            if !TAGS.contains(&name.as_str()) {
                return Err(format!(
                    "Bad Request: can't parse entities: Unsupported start tag \"{name}\" at byte offset {at}"
                ));
            }
            if name == "br" {
                out.push('\n');
            }
            rest = &tail[end + 1..];
            offset = at + end + 1;
        } else {
            let entity_end = tail.find(';').filter(|&e| e <= 10);
            let decoded = entity_end.and_then(|e| match &tail[1..e] {
                "lt" => Some('<'),
                "gt" => Some('>'),
                "amp" => Some('&'),
                "quot" => Some('"'),
                "apos" => Some('\''),
                num if num.starts_with("#x") || num.starts_with("#X") => {
                    u32::from_str_radix(&num[2..], 16)
                        .ok()
                        .and_then(char::from_u32)
                }
                num if num.starts_with('#') => num[1..].parse().ok().and_then(char::from_u32),
                _ => None,
            });
            match (decoded, entity_end) {
                (Some(c), Some(e)) => {
                    out.push(c);
                    rest = &tail[e + 1..];
                    offset = at + e + 1;
                }
                _ => {
                    out.push('&');
                    rest = &tail[1..];
                    offset = at + 1;
                }
            }
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// An answer: HTTP status and the JSON envelope.
struct Reply {
    status: u16,
    body: Value,
}

fn ok(result: Value) -> Reply {
    Reply {
        status: 200,
        body: json!({"ok": true, "result": result}),
    }
}

fn api_error(status: u16, description: &str) -> Reply {
    Reply {
        status,
        body: json!({"ok": false, "error_code": status, "description": description}),
    }
}

fn bad_request(description: &str) -> Reply {
    if description.starts_with("Bad Request:") {
        api_error(400, description)
    } else {
        api_error(400, &format!("Bad Request: {description}"))
    }
}

fn failure_reply(failure: &Failure) -> Reply {
    match failure {
        Failure::RetryAfter(secs) => Reply {
            status: 429,
            body: json!({
                "ok": false,
                "error_code": 429,
                "description": format!("Too Many Requests: retry after {secs}"),
                "parameters": {"retry_after": secs},
            }),
        },
        Failure::ServerError(code) => {
            let description = match code {
                500 => "Internal Server Error",
                502 => "Bad Gateway",
                503 => "Service Unavailable",
                504 => "Gateway Timeout",
                _ => "Server Error",
            };
            api_error(*code, description)
        }
        Failure::Forbidden => api_error(403, "Forbidden: bot was blocked by the user"),
        Failure::TooLarge => api_error(413, "Request Entity Too Large"),
        Failure::BadRequest(description) => bad_request(description),
        Failure::Api {
            status,
            description,
        } => api_error(*status, description),
        Failure::Hold(_) => unreachable!("holds are not answers"),
    }
}

fn respond(reply: Reply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(reply.body)).into_response()
}

struct ParsedBody {
    kind: BodyKind,
    params: Map<String, Value>,
    files: Vec<UploadedFile>,
}

async fn handle(State(app): State<App>, req: Request) -> Response {
    // Pacing times a call from when its request began, not when its body had arrived.
    let started = Instant::now();
    let path = req.uri().path().to_owned();
    if let Some(rest) = path.strip_prefix("/file/bot") {
        return serve_file(&app, rest);
    }
    let Some((token, method)) = path.strip_prefix("/bot").and_then(|r| r.split_once('/')) else {
        return respond(api_error(404, "Not Found"));
    };
    let (token, method) = (token.to_owned(), method.trim_end_matches('/').to_owned());
    let method_lc = method.to_ascii_lowercase();

    let required = app.inner.lock().required_token.clone();
    if required.is_some_and(|t| t != token) {
        return respond(api_error(401, "Unauthorized"));
    }

    let chunked = req
        .headers()
        .get(header::TRANSFER_ENCODING)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
    let limit = app.inner.lock().upload_limit;
    let body = match parse_body(req, limit).await {
        Ok(body) => body,
        Err(description) => return respond(bad_request(&description)),
    };
    let too_large = body.files.iter().any(|f| f.truncated);
    let chat_id = body.params.get("chat_id").and_then(value_i64);

    let seq = {
        let mut st = app.inner.lock();
        let seq = st.calls.len();
        st.calls.push(Call {
            seq,
            method: method.clone(),
            token: token.clone(),
            body_kind: body.kind,
            chunked,
            params: Value::Object(body.params),
            files: body.files,
            resent_file_id: None,
            status: None,
            response: None,
            received_at: Instant::now(),
            answered_at: None,
        });
        seq
    };
    app.inner.changed.notify_waiters();

    let paced = if method_lc == "getupdates" {
        Ok(())
    } else {
        app.inner.lock().pace(started, chat_id)
    };
    let reply = if let Err(retry_after) = paced {
        failure_reply(&Failure::RetryAfter(retry_after))
    } else if too_large {
        failure_reply(&Failure::TooLarge)
    } else {
        let failure = {
            let mut st = app.inner.lock();
            st.failures
                .get_mut(&method_lc)
                .and_then(VecDeque::pop_front)
        };
        match failure {
            Some(Failure::Hold(gate)) => {
                if !gate.pass(&app.shutdown).await {
                    // The server is going offline; the connection is being severed anyway.
                    return respond(api_error(503, "Service Unavailable"));
                }
                dispatch(&app, &method_lc, &token, seq).await
            }
            Some(failure) => failure_reply(&failure),
            None => dispatch(&app, &method_lc, &token, seq).await,
        }
    };

    {
        let mut st = app.inner.lock();
        let call = &mut st.calls[seq];
        call.status = Some(reply.status);
        call.response = Some(reply.body.clone());
        call.answered_at = Some(Instant::now());
    }
    app.inner.changed.notify_waiters();
    respond(reply)
}

fn serve_file(app: &App, rest: &str) -> Response {
    let file_path = rest.split_once('/').map(|(_, p)| p).unwrap_or("");
    let st = app.inner.lock();
    match st.files.values().find(|f| f.file_path == file_path) {
        Some(f) => (
            [(header::CONTENT_TYPE, "application/octet-stream")],
            f.bytes.as_ref().clone(),
        )
            .into_response(),
        None => respond(api_error(404, "Not Found")),
    }
}

async fn parse_body(req: Request, upload_limit: Option<u64>) -> Result<ParsedBody, String> {
    let mut params = Map::new();
    if let Some(query) = req.uri().query() {
        for (k, v) in url::form_urlencoded::parse(query.as_bytes()) {
            params.insert(k.to_string(), decode_text_param(&k, v.into_owned()));
        }
    }
    let content_type = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();

    if content_type.starts_with("multipart/form-data") {
        let mut multipart = Multipart::from_request(req, &())
            .await
            .map_err(|e| e.body_text())?;
        let mut texts: Vec<(String, String)> = Vec::new();
        let mut parts: Vec<UploadedFile> = Vec::new();
        let mut file_total: u64 = 0;
        while let Some(mut field) = multipart.next_field().await.map_err(|e| e.body_text())? {
            let name = field.name().unwrap_or("").to_owned();
            let file_name = field.file_name().map(str::to_owned);
            let content_type = field.content_type().map(str::to_owned);
            let is_file = file_name.is_some();
            let mut bytes = Vec::new();
            let mut size: u64 = 0;
            let mut truncated = false;
            // The whole body is always read, so a client over the limit gets the 413 answer
            // rather than a connection reset in the middle of its upload.
            while let Some(chunk) = field.chunk().await.map_err(|e| e.body_text())? {
                size += chunk.len() as u64;
                let over = is_file && upload_limit.is_some_and(|l| file_total + size > l);
                if over {
                    truncated = true;
                    bytes = Vec::new();
                } else if !truncated {
                    bytes.extend_from_slice(&chunk);
                }
            }
            if is_file {
                file_total += size;
            }
            match (is_file, String::from_utf8(bytes)) {
                (false, Ok(text)) => texts.push((name, text)),
                (_, bytes) => {
                    let bytes = bytes
                        .map(String::into_bytes)
                        .unwrap_or_else(|e| e.into_bytes());
                    parts.push(UploadedFile {
                        field: name.clone(),
                        part_name: name,
                        file_name,
                        content_type,
                        bytes,
                        size,
                        truncated,
                        by_path: None,
                    });
                }
            }
        }
        // Resolve `attach://<part>` references so each file is recorded under the parameter it
        // was given for; parts that nobody references were sent directly under their field.
        for (key, text) in texts {
            if let Some(part_name) = text.strip_prefix("attach://") {
                if let Some(part) = parts.iter_mut().find(|p| p.part_name == part_name) {
                    part.field = key.clone();
                }
            }
            let value = decode_text_param(&key, text);
            params.insert(key, value);
        }
        return Ok(ParsedBody {
            kind: BodyKind::Multipart,
            params,
            files: parts,
        });
    }

    let bytes = axum::body::to_bytes(req.into_body(), usize::MAX)
        .await
        .map_err(|e| format!("reading body: {e}"))?;
    if bytes.is_empty() {
        return Ok(ParsedBody {
            kind: BodyKind::Empty,
            params,
            files: Vec::new(),
        });
    }
    if content_type.starts_with("application/json") {
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(obj)) => params.extend(obj),
            Ok(_) => return Err("parameters must be a JSON object".into()),
            Err(e) => return Err(format!("can't parse JSON: {e}")),
        }
        return Ok(ParsedBody {
            kind: BodyKind::Json,
            params,
            files: Vec::new(),
        });
    }
    for (k, v) in url::form_urlencoded::parse(&bytes) {
        params.insert(k.to_string(), decode_text_param(&k, v.into_owned()));
    }
    Ok(ParsedBody {
        kind: BodyKind::Form,
        params,
        files: Vec::new(),
    })
}

async fn dispatch(app: &App, method: &str, token: &str, seq: usize) -> Reply {
    if method == "getupdates" {
        let params = app.inner.lock().calls[seq].params.clone();
        return get_updates(app, &params).await;
    }
    let mut st = app.inner.lock();
    let params = st.calls[seq].params.clone();
    let files = std::mem::take(&mut st.calls[seq].files);
    let reply = handle_sync(&mut st, method, token, &params, &files, seq);
    // Files the call named by path were read (and recorded) while it was handled.
    let read_by_path = std::mem::take(&mut st.calls[seq].files);
    st.calls[seq].files = files.into_iter().chain(read_by_path).collect();
    reply
}

async fn get_updates(app: &App, params: &Value) -> Reply {
    let offset = params.get("offset").and_then(value_i64);
    let limit = params
        .get("limit")
        .and_then(value_i64)
        .unwrap_or(100)
        .clamp(1, 100) as usize;
    let timeout = params
        .get("timeout")
        .and_then(value_i64)
        .unwrap_or(0)
        .max(0) as u64;
    let confirmed = {
        let mut st = app.inner.lock();
        let before = st.updates.len();
        match offset {
            // An offset confirms every update below it: they are never returned again.
            Some(off) if off >= 0 => st.updates.retain(|u| u.id >= off),
            // A negative offset keeps only the last `-off` updates, as Telegram documents.
            Some(off) => {
                let keep = off.unsigned_abs() as usize;
                while st.updates.len() > keep {
                    st.updates.pop_front();
                }
            }
            None => {}
        }
        let hook = st.on_confirm.clone();
        match (offset, hook) {
            (Some(off), Some(hook)) if off >= 0 && st.updates.len() < before => Some((off, hook)),
            _ => None,
        }
    };
    if let Some((off, hook)) = confirmed {
        hook(off);
    }
    app.inner.changed.notify_waiters();
    if timeout > 0 {
        let has_updates = || !app.inner.lock().updates.is_empty();
        tokio::select! {
            _ = wait_until(&app.inner.changed, has_updates, Duration::from_secs(timeout)) => {}
            _ = app.shutdown.cancelled() => {}
        }
    }
    let mut st = app.inner.lock();
    let batch: Vec<Value> = st
        .updates
        .iter()
        .take(limit)
        .map(|u| u.json.clone())
        .collect();
    if let Some(last) = st.updates.iter().take(limit).map(|u| u.id).max() {
        st.delivered_upto = st.delivered_upto.max(last);
    }
    ok(Value::Array(batch))
}

fn handle_sync(
    st: &mut FakeState,
    method: &str,
    token: &str,
    p: &Value,
    files: &[UploadedFile],
    seq: usize,
) -> Reply {
    match method {
        "getme" => {
            let mut me = bot_user_json(token);
            let obj = me.as_object_mut().expect("object");
            obj.insert("can_join_groups".into(), json!(true));
            obj.insert("can_read_all_group_messages".into(), json!(false));
            obj.insert("supports_inline_queries".into(), json!(false));
            obj.insert("can_connect_to_business".into(), json!(false));
            obj.insert("has_main_web_app".into(), json!(false));
            ok(me)
        }
        "sendmessage" => send_message(st, token, p),
        "editmessagetext" => edit_message(st, p, EditKind::Text),
        "editmessagecaption" => edit_message(st, p, EditKind::Caption),
        "editmessagereplymarkup" => edit_message(st, p, EditKind::Markup),
        "deletemessage" => {
            let (Some(chat_id), Some(message_id)) = (
                p.get("chat_id").and_then(value_i64),
                p.get("message_id")
                    .and_then(value_i64)
                    .and_then(|v| i32::try_from(v).ok()),
            ) else {
                return bad_request("message identifier is not specified");
            };
            match st
                .messages
                .get_mut(&(chat_id, message_id))
                .filter(|m| !m.deleted)
            {
                Some(m) => {
                    m.deleted = true;
                    ok(json!(true))
                }
                None => bad_request("message to delete not found"),
            }
        }
        "deletemessages" => {
            let chat_id = p.get("chat_id").and_then(value_i64).unwrap_or(0);
            let ids = p
                .get("message_ids")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            for id in ids.iter().filter_map(value_i64) {
                if let Some(m) = i32::try_from(id)
                    .ok()
                    .and_then(|id| st.messages.get_mut(&(chat_id, id)))
                {
                    m.deleted = true;
                }
            }
            ok(json!(true))
        }
        m if media_method(m).is_some() => send_media(st, m, token, p, files, seq),
        "setmycommands" => {
            st.commands = p.get("commands").cloned().unwrap_or(json!([]));
            ok(json!(true))
        }
        "getmycommands" => ok(st.commands.clone()),
        "deletemycommands" => {
            st.commands = json!([]);
            ok(json!(true))
        }
        "sendchataction" => match p.get("chat_id").and_then(value_i64) {
            Some(_) => ok(json!(true)),
            None => bad_request("chat not found"),
        },
        "answercallbackquery"
        | "deletewebhook"
        | "setwebhook"
        | "setmydescription"
        | "setmyshortdescription"
        | "setmyname"
        | "setchatmenubutton"
        | "close"
        | "logout" => ok(json!(true)),
        "getwebhookinfo" => ok(json!({
            "url": "",
            "has_custom_certificate": false,
            "pending_update_count": st.updates.len(),
        })),
        "getfile" => {
            let id = p.get("file_id").and_then(Value::as_str).unwrap_or("");
            match st.files.get(id) {
                Some(f) => ok(json!({
                    "file_id": f.file_id,
                    "file_unique_id": f.meta["file_unique_id"],
                    "file_size": f.bytes.len(),
                    "file_path": f.file_path,
                })),
                None => bad_request("invalid file_id"),
            }
        }
        // What Telegram answers for a method it does not know.
        _ => api_error(404, "Not Found"),
    }
}

/// Validates `reply_parameters` / `reply_to_message_id` and returns the embedded message.
fn reply_target(
    st: &FakeState,
    chat_id: i64,
    p: &Value,
) -> Result<(Option<i32>, Option<Value>), Reply> {
    let Some(target) = reply_to_param(p) else {
        return Ok((None, None));
    };
    match st.reply_json(chat_id, target) {
        Some(json) => Ok((Some(target), Some(json))),
        None => {
            let allow = p
                .get("reply_parameters")
                .and_then(|r| r.get("allow_sending_without_reply"))
                .or_else(|| p.get("allow_sending_without_reply"))
                .and_then(Value::as_bool)
                .unwrap_or(false);
            if allow {
                Ok((None, None))
            } else {
                Err(bad_request("message to be replied not found"))
            }
        }
    }
}

/// An inline keyboard is part of the message Telegram returns; other keyboards are not.
fn inline_markup(p: &Value) -> Option<Value> {
    p.get("reply_markup")
        .filter(|m| m.get("inline_keyboard").is_some())
        .cloned()
}

#[allow(clippy::too_many_arguments)]
fn store_bot_message(
    st: &mut FakeState,
    token: &str,
    chat_id: i64,
    kind: &'static str,
    text: Option<String>,
    caption: Option<String>,
    media: Option<(String, Value)>,
    reply: (Option<i32>, Option<Value>),
    markup: Option<Value>,
) -> Value {
    let message_id = st.next_message_id(chat_id);
    let mut m = Map::new();
    m.insert("message_id".into(), json!(message_id));
    m.insert("from".into(), bot_user_json(token));
    m.insert("chat".into(), st.chat_json(chat_id));
    m.insert("date".into(), json!(now_secs()));
    if let Some(reply_json) = &reply.1 {
        m.insert("reply_to_message".into(), reply_json.clone());
    }
    if let Some(text) = &text {
        m.insert("text".into(), json!(text));
    }
    let mut file_id = None;
    if let Some((id, meta)) = media {
        // Photos come back as an array of sizes; every other kind as one object.
        let value = if kind == "photo" { json!([meta]) } else { meta };
        m.insert(kind.into(), value);
        file_id = Some(id);
    }
    if let Some(caption) = &caption {
        m.insert("caption".into(), json!(caption));
    }
    if let Some(markup) = &markup {
        m.insert("reply_markup".into(), markup.clone());
    }
    let json = Value::Object(m);
    st.messages.insert(
        (chat_id, message_id),
        SentMessage {
            chat_id,
            message_id,
            from_bot: true,
            kind,
            history: text.iter().chain(caption.iter()).cloned().collect(),
            text,
            caption,
            file_id,
            reply_to: reply.0,
            reply_markup: markup,
            deleted: false,
            json: json.clone(),
        },
    );
    json
}

fn send_message(st: &mut FakeState, token: &str, p: &Value) -> Reply {
    let Some(chat_id) = p.get("chat_id").and_then(value_i64) else {
        return bad_request("chat not found");
    };
    let raw = p.get("text").and_then(Value::as_str).unwrap_or("");
    let text = match render(raw, p.get("parse_mode").and_then(Value::as_str)) {
        Ok(t) => t,
        Err(e) => return bad_request(&e),
    };
    if text.trim().is_empty() {
        return bad_request("message text is empty");
    }
    if text.chars().count() > MAX_TEXT_LEN {
        return bad_request("message is too long");
    }
    let reply = match reply_target(st, chat_id, p) {
        Ok(r) => r,
        Err(e) => return e,
    };
    let markup = inline_markup(p);
    ok(store_bot_message(
        st,
        token,
        chat_id,
        "text",
        Some(text),
        None,
        None,
        reply,
        markup,
    ))
}

fn send_media(
    st: &mut FakeState,
    method: &str,
    token: &str,
    p: &Value,
    files: &[UploadedFile],
    seq: usize,
) -> Reply {
    let (field, kind) = media_method(method).expect("media method");
    let Some(chat_id) = p.get("chat_id").and_then(value_i64) else {
        return bad_request("chat not found");
    };
    let caption = match p.get("caption").and_then(Value::as_str) {
        Some(raw) => match render(raw, p.get("parse_mode").and_then(Value::as_str)) {
            Ok(c) if c.chars().count() > MAX_CAPTION_LEN => {
                return bad_request("message caption is too long")
            }
            Ok(c) => Some(c),
            Err(e) => return bad_request(&e),
        },
        None => None,
    };
    let reply = match reply_target(st, chat_id, p) {
        Ok(r) => r,
        Err(e) => return e,
    };

    let local = match p.get(field).and_then(Value::as_str) {
        Some(u) if st.local_mode && u.starts_with("file://") => match read_local(field, u) {
            Ok(f) => {
                st.calls[seq].files.push(f.clone());
                Some(f)
            }
            Err(e) => return bad_request(&e),
        },
        _ => None,
    };
    let (file_id, meta) = if let Some(upload) =
        files.iter().find(|f| f.field == field).or(local.as_ref())
    {
        if upload.size == 0 {
            return bad_request("file must be non-empty");
        }
        let n = st.next_file;
        st.next_file += 1;
        let file_id = format!("fake-{kind}-{n}");
        let mime = upload
            .content_type
            .as_deref()
            .filter(|c| !c.is_empty() && *c != "application/octet-stream")
            .unwrap_or_else(|| mime_for(upload.file_name.as_deref()))
            .to_owned();
        let mut meta = json!({
            "file_id": file_id,
            "file_unique_id": format!("uniq-{n}"),
            "file_size": upload.size,
        });
        let num = |k: &str| p.get(k).and_then(value_i64).unwrap_or(0);
        match kind {
            "video" | "animation" => {
                meta["width"] = json!(num("width"));
                meta["height"] = json!(num("height"));
                meta["duration"] = json!(num("duration"));
            }
            "audio" => {
                meta["duration"] = json!(num("duration"));
                for k in ["performer", "title"] {
                    if let Some(v) = p.get(k) {
                        meta[k] = v.clone();
                    }
                }
            }
            "voice" => meta["duration"] = json!(num("duration")),
            "photo" => {
                meta["width"] = json!(0);
                meta["height"] = json!(0);
            }
            _ => {}
        }
        if kind != "photo" {
            if let Some(name) = upload.file_name.as_deref().filter(|n| !n.is_empty()) {
                meta["file_name"] = json!(name);
            }
            meta["mime_type"] = json!(mime);
        }
        let ext = upload
            .file_name
            .as_deref()
            .and_then(|n| n.rsplit_once('.'))
            .map(|(_, e)| format!(".{e}"))
            .unwrap_or_default();
        st.files.insert(
            file_id.clone(),
            StoredFile {
                file_id: file_id.clone(),
                kind,
                file_path: format!("{kind}s/file_{n}{ext}"),
                bytes: Arc::new(upload.bytes.clone()),
                meta: meta.clone(),
            },
        );
        (file_id, meta)
    } else {
        match p.get(field).and_then(Value::as_str) {
            None => return bad_request(&format!("there is no {field} in the request")),
            Some(id) => {
                let Some(stored) = st.files.get(id).filter(|_| !id.starts_with("attach://")) else {
                    return bad_request("wrong file identifier/HTTP URL specified");
                };
                if stored.kind != kind {
                    return bad_request(&format!(
                        "can't use file of type {} as {}",
                        capitalize(stored.kind),
                        capitalize(kind)
                    ));
                }
                let out = (stored.file_id.clone(), stored.meta.clone());
                st.calls[seq].resent_file_id = Some(id.to_owned());
                out
            }
        }
    };
    let markup = inline_markup(p);
    ok(store_bot_message(
        st,
        token,
        chat_id,
        kind,
        None,
        caption,
        Some((file_id, meta)),
        reply,
        markup,
    ))
}

/// A `file://` media parameter read the way a local Bot API server reads it.
fn read_local(field: &str, url: &str) -> Result<UploadedFile, String> {
    let path = reqwest::Url::parse(url)
        .ok()
        .and_then(|u| u.to_file_path().ok())
        .filter(|p| p.is_absolute())
        .ok_or_else(|| format!("wrong file URL specified: {url}"))?;
    let bytes = std::fs::read(&path).map_err(|e| format!("can't read {}: {e}", path.display()))?;
    Ok(UploadedFile {
        field: field.to_owned(),
        part_name: field.to_owned(),
        file_name: path.file_name().map(|n| n.to_string_lossy().into_owned()),
        content_type: None,
        size: bytes.len() as u64,
        bytes,
        truncated: false,
        by_path: Some(path),
    })
}

fn capitalize(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_uppercase().chain(c).collect())
        .unwrap_or_default()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum EditKind {
    Text,
    Caption,
    Markup,
}

fn edit_message(st: &mut FakeState, p: &Value, what: EditKind) -> Reply {
    if p.get("inline_message_id").is_some() {
        // Inline messages are not modelled; Telegram answers `true` for them.
        return ok(json!(true));
    }
    let (Some(chat_id), Some(message_id)) = (
        p.get("chat_id").and_then(value_i64),
        p.get("message_id")
            .and_then(value_i64)
            .and_then(|v| i32::try_from(v).ok()),
    ) else {
        return bad_request("message identifier is not specified");
    };
    let new_markup = inline_markup(p);
    let rendered = match what {
        EditKind::Markup => None,
        EditKind::Text | EditKind::Caption => {
            let key = if what == EditKind::Text {
                "text"
            } else {
                "caption"
            };
            let raw = p.get(key).and_then(Value::as_str).unwrap_or("");
            match render(raw, p.get("parse_mode").and_then(Value::as_str)) {
                Ok(t) => Some(t),
                Err(e) => return bad_request(&e),
            }
        }
    };
    let Some(m) = st
        .messages
        .get_mut(&(chat_id, message_id))
        .filter(|m| !m.deleted)
    else {
        return bad_request("message to edit not found");
    };
    if !m.from_bot {
        return bad_request("message can't be edited");
    }
    match what {
        EditKind::Text => {
            let text = rendered.expect("rendered");
            if m.text.is_none() {
                return bad_request("there is no text in the message to edit");
            }
            if text.trim().is_empty() {
                return bad_request("message text is empty");
            }
            if text.chars().count() > MAX_TEXT_LEN {
                return bad_request("message is too long");
            }
            if m.text.as_deref() == Some(text.as_str()) && m.reply_markup == new_markup {
                return api_error(400, NOT_MODIFIED);
            }
            m.json["text"] = json!(text);
            m.history.push(text.clone());
            m.text = Some(text);
        }
        EditKind::Caption => {
            let caption = rendered.expect("rendered");
            if m.kind == "text" {
                return bad_request("there is no caption in the message to edit");
            }
            if caption.chars().count() > MAX_CAPTION_LEN {
                return bad_request("message caption is too long");
            }
            if m.caption.as_deref().unwrap_or("") == caption && m.reply_markup == new_markup {
                return api_error(400, NOT_MODIFIED);
            }
            m.json["caption"] = json!(caption);
            m.history.push(caption.clone());
            m.caption = Some(caption);
        }
        EditKind::Markup => {
            if m.reply_markup == new_markup {
                return api_error(400, NOT_MODIFIED);
            }
        }
    }
    m.reply_markup = new_markup.clone();
    match new_markup {
        Some(markup) => m.json["reply_markup"] = markup,
        None => {
            if let Some(obj) = m.json.as_object_mut() {
                obj.remove("reply_markup");
            }
        }
    }
    m.json["edit_date"] = json!(now_secs());
    ok(m.json.clone())
}
