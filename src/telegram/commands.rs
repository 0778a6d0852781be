//! The bot's commands: one list, derived with teloxide's `BotCommands`, for
//! parsing, for Telegram's command menu (`setMyCommands`, in English and
//! Persian) and for /help. The descriptions live in the catalogue
//! ([`crate::i18n::command_description`]).

use teloxide::payloads::SetMyCommandsSetters;
use teloxide::prelude::Requester;
use teloxide::types::BotCommand;
use teloxide::utils::command::{BotCommands, ParseError};

use crate::botapi::pacer::{Priority, Target};
use crate::botapi::Api;
use crate::i18n::{command_description, Lang};

/// Every command. The argument is the rest of the message, trimmed.
#[derive(BotCommands, Clone, Debug, PartialEq, Eq)]
#[command(rename_rule = "lowercase")]
pub enum Command {
    Start,
    Help,
    #[command(parse_with = rest)]
    Audio(String),
    Settings,
    #[command(parse_with = rest)]
    Jobs(String),
    #[command(parse_with = rest)]
    Job(String),
    #[command(parse_with = rest)]
    Cancel(String),
    #[command(parse_with = rest)]
    Retry(String),
    /// Admins only: not listed in the menu or /help.
    #[command(hide)]
    Health,
    /// Admins only: `/update` or `/update rollback`.
    #[command(hide, parse_with = rest)]
    Update(String),
}

fn rest(s: String) -> Result<(String,), ParseError> {
    Ok((s.trim().to_string(),))
}

/// What a message's text is, as far as commands go.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    Command(Command),
    /// A command addressed to another bot (`/start@otherbot`): not ours.
    ForAnotherBot,
    /// Starts with `/` but names no command of ours.
    Unknown,
    NotACommand,
}

/// Parse a message. The command word is case-insensitive (`/Cancel`), any
/// whitespace separates it from the argument, and `@name` must be this bot's.
pub fn parse(text: &str, bot_username: &str) -> Parsed {
    let text = text.trim_start();
    if !text.starts_with('/') {
        return Parsed::NotACommand;
    }
    let (head, arg) = text.split_once(char::is_whitespace).unwrap_or((text, ""));
    let name = head[1..].split('@').next().unwrap_or("");
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Parsed::NotACommand;
    }
    match Command::parse(
        &format!("{} {}", head.to_ascii_lowercase(), arg.trim()),
        bot_username,
    ) {
        Ok(c) => Parsed::Command(c),
        Err(ParseError::WrongBotName(_)) => Parsed::ForAnotherBot,
        Err(_) => Parsed::Unknown,
    }
}

/// The commands users see, by name (hidden ones left out).
pub fn listed() -> Vec<String> {
    Command::bot_commands()
        .into_iter()
        .map(|c| c.command.trim_start_matches('/').to_string())
        .collect()
}

/// Register the command menu in both languages. Failure is logged only:
/// commands work without a menu.
pub async fn set_commands(api: &Api) {
    for lang in [Lang::En, Lang::Fa] {
        let cmds: Vec<BotCommand> = listed()
            .into_iter()
            .filter_map(|c| command_description(lang, &c).map(|d| BotCommand::new(c, d)))
            .collect();
        let call = || {
            let req = api.bot.set_my_commands(cmds.clone());
            match lang {
                Lang::En => req,
                _ => req.language_code(lang.code()),
            }
        };
        if let Err(e) = api.pacer.call(Target::NoChat, Priority::Urgent, call).await {
            tracing::warn!(error = %e, "setMyCommands failed (commands still work)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_with_bot_names_and_arguments() {
        let me = "tgdl_bot";
        assert_eq!(parse("/start", me), Parsed::Command(Command::Start));
        assert_eq!(
            parse("/Cancel@tgdl_bot  ab12cd34 ", me),
            Parsed::Command(Command::Cancel("ab12cd34".into()))
        );
        assert_eq!(
            parse("/audio https://e.com/x", me),
            Parsed::Command(Command::Audio("https://e.com/x".into()))
        );
        assert_eq!(
            parse("/audio\nhttps://e.com/x", me),
            Parsed::Command(Command::Audio("https://e.com/x".into()))
        );
        assert_eq!(parse("https://e.com/x", me), Parsed::NotACommand);
        assert_eq!(parse("/", me), Parsed::NotACommand);
        assert_eq!(parse("/../etc", me), Parsed::NotACommand);
        assert_eq!(parse("/nosuch", me), Parsed::Unknown);
        assert_eq!(parse("/start@otherbot", me), Parsed::ForAnotherBot);
    }

    /// A command without a description in either language would show up
    /// blank in the menu: every listed command has both.
    #[test]
    fn every_listed_command_is_described_in_both_languages() {
        let listed = listed();
        assert!(listed.contains(&"cancel".to_string()));
        assert!(!listed.contains(&"health".to_string()));
        for c in &listed {
            for lang in [Lang::En, Lang::Fa] {
                assert!(command_description(lang, c).is_some(), "{c} in {lang:?}");
            }
        }
    }
}
