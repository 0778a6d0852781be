//! `sendMessage` with its answer read for the new message's id only.
//!
//! Every text the bot sends (an acknowledgement, a reply, a note to an admin)
//! needs nothing of Telegram's answer but the id. teloxide decodes the answer
//! into its `Message`, whose flattened, untagged enums make serde buffer the
//! object and try one variant after another: in a `perf` profile of a
//! 1,000-link burst that decoding was 119 of the bot's 1,365 samples, and
//! 25 when read into [`SentId`] (`benches/README.md`). The request is
//! teloxide's own `SendMessage` payload, serialised the same way; only the
//! answer's type differs.

use serde::{Deserialize, Serialize};
use teloxide::payloads::SendMessage;
use teloxide::requests::{JsonRequest, Payload};
use teloxide::Bot;

/// [`SendMessage`] under the same method name, answered with [`SentId`].
#[derive(Serialize)]
#[serde(transparent)]
pub(super) struct SendMessageForId(pub SendMessage);

impl Payload for SendMessageForId {
    type Output = SentId;
    const NAME: &'static str = <SendMessage as Payload>::NAME;
}

/// The part of the sent `Message` the bot reads; serde skips the rest
/// without building it.
#[derive(Debug, Deserialize)]
pub(super) struct SentId {
    pub message_id: i32,
}

/// The request, ready for the pacer.
pub(super) fn request(bot: &Bot, payload: SendMessage) -> JsonRequest<SendMessageForId> {
    JsonRequest::new(bot.clone(), SendMessageForId(payload))
}

#[cfg(test)]
mod tests {
    use super::*;
    use teloxide::types::{ChatId, Message, MessageId, ReplyParameters};

    /// The request body is exactly teloxide's, field for field.
    #[test]
    fn serialises_as_teloxides_send_message() {
        let mut p = SendMessage::new(ChatId(42), "hello");
        p.reply_parameters = Some(ReplyParameters::new(MessageId(7)).allow_sending_without_reply());
        let ours = serde_json::to_value(SendMessageForId(p.clone())).unwrap();
        assert_eq!(ours, serde_json::to_value(&p).unwrap());
        assert_eq!(ours["reply_parameters"]["message_id"], 7);
        assert_eq!(SendMessageForId::NAME, "SendMessage");
    }

    /// A whole `Message` answer (a reply with a keyboard, as Telegram sends
    /// it) gives the same id as teloxide's decoding.
    #[test]
    fn reads_the_id_of_a_full_message() {
        let answer = serde_json::json!({
            "message_id": 313,
            "from": {"id": 1, "is_bot": true, "first_name": "tgdl", "username": "tgdl_bot"},
            "chat": {"id": 20001, "type": "private", "first_name": "User"},
            "date": 1764900000,
            "reply_to_message": {
                "message_id": 12,
                "from": {"id": 20001, "is_bot": false, "first_name": "User", "language_code": "en"},
                "chat": {"id": 20001, "type": "private", "first_name": "User"},
                "date": 1764899999,
                "text": "http://127.0.0.1/clip.mp4",
                "entities": [{"type": "url", "offset": 0, "length": 25}]
            },
            "text": "Accepted",
            "reply_markup": {"inline_keyboard": [[{"text": "Video", "callback_data": "k:v"}]]}
        });
        let full: Message = serde_json::from_value(answer.clone()).unwrap();
        let lean: SentId = serde_json::from_value(answer).unwrap();
        assert_eq!(lean.message_id, full.id.0);
        assert!(serde_json::from_value::<SentId>(serde_json::json!({"date": 1})).is_err());
    }
}
