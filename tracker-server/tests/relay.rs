//! The relay (`--relay-listen`) through real TLS clients built from the `trust` configurations
//! agents use: reflect, pairing by an introduction's token and forwarding both ways, each
//! refusal's status, the per-identity cap, the tamper flag and the metrics.

mod common;

use std::time::Duration;

use anyhow::{Result, ensure};
use common::nat::*;
use common::*;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use torrentguard_protocol::HashAlgo;
use torrentguard_protocol::relay::{RelayRequest, RelayStatus};
use torrentguard_tracker::relay::RelayConfig;
use torrentguard_trust::Identity;

async fn relay_harness(tweak: impl FnOnce(&mut RelayConfig)) -> Result<Harness> {
    Harness::start(|c| {
        let mut relay = RelayConfig::on("127.0.0.1:0".parse().expect("valid address"));
        tweak(&mut relay);
        c.relay = Some(relay);
    })
    .await
}

fn relay_addr(h: &Harness) -> std::net::SocketAddr {
    h.tracker.relay_addr.expect("the relay runs")
}

/// Bob seeds a file, Alice asks to meet him through the relay: the token.
async fn relay_introduction(h: &Harness) -> Result<String> {
    let m = file_with_seeder(h, &h.bob, 7100).await?;
    let intro = introduce(h, &h.alice, &m, &h.bob, 7200, "relay").await?;
    ensure!(intro.relay_port == Some(relay_addr(h).port()));
    Ok(intro.token)
}

async fn metrics_text(h: &Harness) -> Result<String> {
    Ok(h.anonymous
        .get(h.url("/metrics"))
        .send()
        .await?
        .text()
        .await?)
}

fn sessions(text: &str, outcome: &str) -> Option<u64> {
    metric(
        text,
        &format!("torrentguard_relay_sessions_total{{outcome=\"{outcome}\"}}"),
    )
}

/// Waits until `n` first sides wait at the relay (the relay answers a join only once paired,
/// so this is how a test knows a join is in).
async fn waiting_joins(h: &Harness, n: u64) -> Result<()> {
    eventually(Duration::from_secs(10), "the join is in", || async {
        let text = metrics_text(h).await?;
        Ok((metric(&text, "torrentguard_relay_joins_waiting") == Some(n)).then_some(()))
    })
    .await
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 11) as u8)
        .collect()
}

#[tokio::test]
async fn reflect_answers_the_clients_address_and_port() -> Result<()> {
    within(async {
        let h = relay_harness(|_| {}).await?;
        let mut s = relay_connect(relay_addr(&h), &h.alice, h.tracker.fingerprint).await?;
        let mine = s.get_ref().0.local_addr()?;
        let answer = relay_ask(&mut s, RelayRequest::Reflect).await?;
        ensure!(answer.status == RelayStatus::Ok, "{answer:?}");
        ensure!(answer.observed == Some(mine), "{answer:?} vs {mine}");
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

/// Copies `out` into `s` and reads everything back until the other side closes.
async fn exchange(
    s: tokio_rustls::client::TlsStream<tokio::net::TcpStream>,
    out: Vec<u8>,
) -> Result<Vec<u8>> {
    let (mut r, mut w) = tokio::io::split(s);
    let send = async move {
        w.write_all(&out).await?;
        w.shutdown().await?;
        Ok::<_, anyhow::Error>(w)
    };
    let recv = async move {
        let mut got = Vec::new();
        r.read_to_end(&mut got).await?;
        Ok::<_, anyhow::Error>(got)
    };
    let (_w, got) = tokio::try_join!(send, recv)?;
    Ok(got)
}

#[tokio::test]
async fn two_sides_are_paired_and_bytes_flow_both_ways_unaltered() -> Result<()> {
    within(async {
        let h = relay_harness(|_| {}).await?;
        let token = relay_introduction(&h).await?;
        let (relay, pin) = (relay_addr(&h), h.tracker.fingerprint);
        let (a, s) = tokio::try_join!(
            relay_join(relay, &h.alice, pin, &token),
            relay_join(relay, &h.bob, pin, &token)
        )?;
        ensure!(a.1.status == RelayStatus::Ok && s.1.status == RelayStatus::Ok);
        let text = metrics_text(&h).await?;
        ensure!(metric(&text, "torrentguard_relay_sessions_active") == Some(1));
        let (up, down) = (pattern(4 << 20, 1), pattern(4 << 20, 2));
        let (from_seeder, from_asker) =
            tokio::try_join!(exchange(a.0, up.clone()), exchange(s.0, down.clone()))?;
        ensure!(HashAlgo::Sha256.digest(&from_asker) == HashAlgo::Sha256.digest(&up));
        ensure!(HashAlgo::Sha256.digest(&from_seeder) == HashAlgo::Sha256.digest(&down));
        let text = eventually(Duration::from_secs(10), "the session ends", || async {
            let text = metrics_text(&h).await?;
            Ok((metric(&text, "torrentguard_relay_sessions_active") == Some(0)).then_some(text))
        })
        .await?;
        ensure!(sessions(&text, "paired") == Some(1));
        ensure!(metric(&text, "torrentguard_relay_bytes_total") == Some(8 << 20));
        ensure!(metric(&text, "torrentguard_introductions_total{via=\"relay\"}") == Some(1));
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn strangers_third_joiners_and_unknown_tokens_are_refused() -> Result<()> {
    within(async {
        let h = relay_harness(|_| {}).await?;
        let token = relay_introduction(&h).await?;
        let (relay, pin) = (relay_addr(&h), h.tracker.fingerprint);
        let carol = Identity::generate("carol")?;
        let (_, stranger) = relay_join(relay, &carol, pin, &token).await?;
        ensure!(stranger.status == RelayStatus::NotYours, "{stranger:?}");
        let (_, unknown) = relay_join(relay, &h.alice, pin, &"ab".repeat(32)).await?;
        ensure!(unknown.status == RelayStatus::UnknownToken, "{unknown:?}");
        // Bob joins and waits; a second Bob is a side joining twice.
        let first = tokio::spawn({
            let bob = h.bob.clone();
            let token = token.clone();
            async move { relay_join(relay, &bob, pin, &token).await }
        });
        waiting_joins(&h, 1).await?;
        let (_, again) = relay_join(relay, &h.bob, pin, &token).await?;
        ensure!(again.status == RelayStatus::NotYours, "{again:?}");
        let (_alice, ok) = relay_join(relay, &h.alice, pin, &token).await?;
        ensure!(ok.status == RelayStatus::Ok, "{ok:?}");
        let (_bob, ok) = first.await??;
        ensure!(ok.status == RelayStatus::Ok, "{ok:?}");
        // A punch introduction's token is no relay token.
        let m2 = file_with_seeder(&h, &carol, 7300).await?;
        let punch = introduce(&h, &h.alice, &m2, &carol, 7200, "punch").await?;
        let (_, p) = relay_join(relay, &h.alice, pin, &punch.token).await?;
        ensure!(p.status == RelayStatus::UnknownToken, "{p:?}");
        let text = metrics_text(&h).await?;
        ensure!(sessions(&text, "refused") >= Some(4), "{text}");
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn a_side_left_alone_times_out() -> Result<()> {
    within(async {
        let h = relay_harness(|_| {}).await?;
        let token = relay_introduction(&h).await?;
        let (_, answer) =
            relay_join(relay_addr(&h), &h.alice, h.tracker.fingerprint, &token).await?;
        ensure!(answer.status == RelayStatus::Timeout, "{answer:?}");
        let text = metrics_text(&h).await?;
        ensure!(sessions(&text, "timeout") == Some(1));
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn the_session_cap_per_identity_answers_over_limit() -> Result<()> {
    within(async {
        let h = relay_harness(|r| r.sessions_per_identity = 1).await?;
        let first = relay_introduction(&h).await?;
        let m = file_with_seeder(&h, &h.bob, 7100).await?;
        let second = introduce(&h, &h.alice, &m, &h.bob, 7200, "relay").await?;
        let (relay, pin) = (relay_addr(&h), h.tracker.fingerprint);
        let waiting = tokio::spawn({
            let alice = h.alice.clone();
            async move { relay_join(relay, &alice, pin, &first).await }
        });
        waiting_joins(&h, 1).await?;
        let (_, over) = relay_join(relay, &h.alice, pin, &second.token).await?;
        ensure!(over.status == RelayStatus::OverLimit, "{over:?}");
        ensure!(over.message.contains("most"), "{over:?}");
        waiting.abort();
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn the_tamper_flag_flips_exactly_one_byte_of_the_seeders_stream() -> Result<()> {
    within(async {
        let h = relay_harness(|r| r.tamper_for_tests = true).await?;
        let token = relay_introduction(&h).await?;
        let (relay, pin) = (relay_addr(&h), h.tracker.fingerprint);
        let (a, s) = tokio::try_join!(
            relay_join(relay, &h.alice, pin, &token),
            relay_join(relay, &h.bob, pin, &token)
        )?;
        let (up, down) = (pattern(1 << 20, 3), pattern(1 << 20, 4));
        let (at_asker, at_seeder) =
            tokio::try_join!(exchange(a.0, up.clone()), exchange(s.0, down.clone()))?;
        ensure!(
            at_seeder == up,
            "the downloader-to-seeder direction is untouched"
        );
        ensure!(at_asker.len() == down.len());
        let differ: Vec<usize> = (0..down.len())
            .filter(|&i| at_asker[i] != down[i])
            .collect();
        ensure!(differ == vec![64 * 1024], "bytes changed at {differ:?}");
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}

#[tokio::test]
async fn without_a_relay_relay_introductions_are_409() -> Result<()> {
    within(async {
        let h = Harness::start(|_| {}).await?;
        ensure!(h.tracker.relay_addr.is_none());
        let m = file_with_seeder(&h, &h.bob, 7100).await?;
        let body = serde_json::json!({"file_id": m.file_id(), "peer": h.bob.fingerprint, "port": 7200, "via": "relay"});
        let resp = h
            .as_peer(&h.alice)
            .post(h.api("/introductions"))
            .json(&body)
            .send()
            .await?;
        expect_error(resp, 409, "no_relay").await?;
        h.tracker.shutdown().await?;
        Ok(())
    })
    .await
}
