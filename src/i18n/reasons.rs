//! Why something could not be done, in words a user understands: every
//! [`FailureCode`] and every [`LinkError`], matched exhaustively so a new
//! reason does not compile until both languages say something for it.

use super::Lang;
use crate::job::FailureCode;
use crate::net::LinkError;

/// Human text for a failure code, in the user's language. `limit_mb` is the
/// limit the code is about: the upload limit for [`FailureCode::TooLarge`],
/// the download limit for [`FailureCode::DownloadTooLarge`].
pub(super) fn reason(lang: Lang, code: FailureCode, limit_mb: u64) -> String {
    use FailureCode as C;
    use Lang::*;
    let too_large = match lang {
        En => format!(
            "the file is larger than the {limit_mb} MB upload limit and no smaller format exists"
        ),
        Fa => {
            format!("حجم فایل از سقف ارسال {limit_mb} مگابایت بیشتر است و قالب کوچک‌تری وجود ندارد")
        }
    };
    // `limit_mb` is the download limit here (see `Msg::Failed`).
    let download_too_large = match lang {
        En => format!(
            "the download passed the {limit_mb} MB limit on what one job may download and was stopped"
        ),
        Fa => format!(
            "دانلود از سقف {limit_mb} مگابایتی هر کار بیشتر شد و متوقف شد"
        ),
    };
    let s: &str = match (lang, code) {
        (En, C::UnsupportedUrl) => "this site or link is not supported",
        (Fa, C::UnsupportedUrl) => "این سایت یا لینک پشتیبانی نمی‌شود",
        (En, C::Unavailable | C::Http404) => "the media is unavailable (removed or never existed)",
        (Fa, C::Unavailable | C::Http404) => "این رسانه در دسترس نیست (حذف شده یا وجود ندارد)",
        (En, C::Private) => "the media is private",
        (Fa, C::Private) => "این رسانه خصوصی است",
        (En, C::GeoBlocked) => "the media is blocked in the server's country",
        (Fa, C::GeoBlocked) => "این رسانه در کشور سرور مسدود است",
        (En, C::Http403) => "the site refused access",
        (Fa, C::Http403) => "سایت اجازهٔ دسترسی نداد",
        (_, C::TooLarge) => &too_large,
        (En, C::DownloadTooLarge) => &download_too_large,
        (Fa, C::DownloadTooLarge) => &download_too_large,
        (En, C::NoSpace) => "the bot's server ran out of disk space",
        (Fa, C::NoSpace) => "فضای دیسک سرور ربات پر شد",
        (En, C::Cancelled) => "cancelled",
        (Fa, C::Cancelled) => "لغو شد",
        (En, C::CrashedRepeatedly) => "the bot crashed repeatedly while working on it",
        (Fa, C::CrashedRepeatedly) => "ربات هنگام کار روی آن چند بار از کار افتاد",
        (En, C::RangeNotSatisfiable) => {
            "the site would not serve the file, even after the download started over"
        }
        (Fa, C::RangeNotSatisfiable) => "سایت فایل را نفرستاد، حتی پس از شروع دوبارهٔ دانلود",
        (En, C::Timeout) => "the download took too long",
        (Fa, C::Timeout) => "دانلود بیش از حد طول کشید",
        (En, C::Network | C::Http5xx | C::Http429) => {
            "the site could not be reached, even after retries"
        }
        (Fa, C::Network | C::Http5xx | C::Http429) => "پس از چند تلاش هم به سایت دسترسی نشد",
        (En, C::LoginRequired) => "the site requires a login for this media",
        (Fa, C::LoginRequired) => "این سایت برای این رسانه ورود به حساب می‌خواهد",
        (En, C::UploadRefused) => "Telegram refused the file",
        (Fa, C::UploadRefused) => "تلگرام فایل را نپذیرفت",
        (En, C::TelegramNetwork | C::Telegram5xx) => {
            "Telegram could not be reached to send the file, even after retries"
        }
        (Fa, C::TelegramNetwork | C::Telegram5xx) => {
            "پس از چند تلاش هم ارسال فایل به تلگرام ممکن نشد"
        }
        (En, C::ChatUnreachable) => "this chat cannot be reached",
        (Fa, C::ChatUnreachable) => "این گفتگو در دسترس نیست",
        (En, C::LocalError) => "a problem on the bot's server; the admins can see the details",
        (Fa, C::LocalError) => "مشکلی در سرور ربات پیش آمد؛ مدیران جزئیات را می‌بینند",
        (En, C::YtdlpUsage) => {
            "the bot's downloader is misconfigured; the admins can see the details"
        }
        (Fa, C::YtdlpUsage) => "دانلودکنندهٔ ربات درست پیکربندی نشده است؛ مدیران جزئیات را می‌بینند",
        (En, C::DestinationRefused) => {
            "the media, or a part of it, is on a private or local network address, which is not allowed"
        }
        (Fa, C::DestinationRefused) => {
            "این رسانه یا بخشی از آن روی نشانی شبکهٔ خصوصی یا محلی است که مجاز نیست"
        }
        (En, C::Unknown) => "the download failed for a reason the bot did not recognise",
        (Fa, C::Unknown) => "دانلود به دلیلی ناشناخته ناموفق بود",
    };
    s.to_string()
}

/// Why a link was refused before it became a job.
pub(super) fn link_refusal(lang: Lang, e: &LinkError) -> String {
    use Lang::*;
    use LinkError as E;
    match (lang, e) {
        (En, E::UnsupportedScheme { .. }) => {
            format!("only http and https links are accepted ({e})")
        }
        (Fa, E::UnsupportedScheme { .. }) => {
            format!("فقط لینک‌های http و https پذیرفته می‌شوند ({e})")
        }
        (En, E::PrivateAddress { .. }) => {
            "links to private or local network addresses are not allowed".into()
        }
        (Fa, E::PrivateAddress { .. }) => "لینک به نشانی‌های شبکهٔ خصوصی یا محلی مجاز نیست".into(),
        (En, E::Unresolvable { .. }) => format!("the address could not be found ({e})"),
        (Fa, E::Unresolvable { .. }) => format!("نشانی پیدا نشد ({e})"),
        (En, E::TooLong { .. }) => "the link is too long".into(),
        (Fa, E::TooLong { .. }) => "لینک بیش از حد طولانی است".into(),
        (En, E::NotALink { .. } | E::LooksLikeOption | E::MissingHost) => {
            "this is not a valid link".into()
        }
        (Fa, E::NotALink { .. } | E::LooksLikeOption | E::MissingHost) => {
            "این لینک معتبر نیست".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every code says something of its own in both languages: nothing falls
    /// through to a generic text, and Persian is not English.
    #[test]
    fn every_failure_code_is_explained_in_both_languages() {
        for code in FailureCode::ALL {
            let en = reason(Lang::En, *code, 50);
            let fa = reason(Lang::Fa, *code, 50);
            assert!(!en.is_empty() && !fa.is_empty(), "{code}");
            assert_ne!(en, fa, "{code} is not translated");
            assert!(
                fa.chars().any(|c| ('\u{0600}'..='\u{06FF}').contains(&c)),
                "{code}: {fa}"
            );
            if *code != FailureCode::Unknown {
                assert_ne!(en, reason(Lang::En, FailureCode::Unknown, 50), "{code}");
            }
        }
    }
}
