//! A `JobService` on a real sled store in a temp dir, for tests that drive
//! the core without the dispatcher.

use std::sync::Arc;

use tgdl::config::Config;
use tgdl::i18n::Lang;
use tgdl::job::{Job, JobOptions};
use tgdl::pipeline::service::{LinkRequest, Submission};
use tgdl::pipeline::JobService;
use tgdl::store::SledStore;

use super::fake_telegram::FakeTelegram;

/// The service the bot would build from the test config plus `extra`.
pub fn service_for(api: &FakeTelegram, dir: &std::path::Path, extra: &str) -> Arc<JobService> {
    let config: Config = super::bot::test_config(dir, api, extra);
    std::fs::create_dir_all(config.downloads_dir()).unwrap();
    let store =
        tgdl::store::OnBlockingPool::shared(Arc::new(SledStore::open(&config.db_dir()).unwrap()));
    Arc::new(JobService::new(Arc::new(config), store, None).expect("job service"))
}

/// `user` sends `link` in `chat`; the job it became.
pub async fn submit_link(core: &JobService, chat: i64, user: u64, link: &str) -> Box<Job> {
    let report = core
        .submit(LinkRequest {
            chat_id: chat,
            user_id: user,
            message_id: 1,
            lang: Lang::En,
            text: link.to_string(),
            entities: vec![],
            options: JobOptions::default(),
            not_before: None,
        })
        .await
        .unwrap();
    match &report.outcomes[0] {
        Submission::Accepted { job, .. } => job.clone(),
        other => panic!("{other:?}"),
    }
}
