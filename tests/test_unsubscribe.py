"""Unsubscribe tokens: signed, verified in constant time, forged ones refused."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from engine.config import load_settings
from engine.errors import DeliveryError
from engine.unsubscribe import (
    DEVELOPMENT_KEY,
    Signer,
    TokenError,
    Unsubscribe,
    signer_for,
    unsubscribe_mailto,
    unsubscribe_url,
    verify_token,
)


def test_token_round_trip():
    signer = Signer({1: "s3cret"})
    token = signer.token(42, "retention")
    assert token.startswith("42.retention.1.")
    assert signer.verify(token) == Unsubscribe(42, "retention", 1)


def test_token_is_deterministic_and_differs_per_merchant_topic_and_key():
    signer = Signer({1: "s3cret"})
    assert signer.token(42, "retention") == signer.token(42, "retention")
    assert signer.token(42, "retention") != signer.token(43, "retention")
    assert signer.token(42, "retention") != signer.token(42, "promo")
    assert signer.token(42, "retention") != Signer({1: "other"}).token(42, "retention")


@pytest.mark.parametrize(
    "forge",
    [
        lambda t: t.replace("42.", "43.", 1),  # another merchant
        lambda t: t.replace(".retention.", ".promo.", 1),  # another topic
        lambda t: t[:-1] + ("A" if t[-1] != "A" else "B"),  # signature changed
        lambda t: t.rsplit(".", 1)[0] + "." + "A" * 43,
        lambda t: t.replace(".1.", ".2.", 1),  # unknown key version
        lambda t: t + "x",
        lambda t: "",
        lambda t: "42.retention.1",
        lambda t: "42.retention.1." + "=" * 43,
        lambda t: t.upper(),
    ],
)
def test_forged_tokens_are_refused(forge):
    signer = Signer({1: "s3cret"})
    with pytest.raises(TokenError):
        signer.verify(forge(signer.token(42, "retention")))


def test_token_from_another_key_is_refused():
    token = Signer({1: "attacker"}).token(42, "retention")
    with pytest.raises(TokenError, match="signature does not match"):
        Signer({1: "s3cret"}).verify(token)


def test_key_rotation_keeps_old_tokens_valid():
    old = Signer({1: "old"}).token(42, "promo")
    rotated = Signer({1: "old", 2: "new"})
    assert rotated.current == 2
    assert rotated.token(42, "promo").split(".")[2] == "2"
    assert rotated.verify(old) == Unsubscribe(42, "promo", 1)
    with pytest.raises(TokenError, match="no longer known"):
        Signer({2: "new"}).verify(old)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(min_value=1, max_value=10**12),
    st.sampled_from(["onboarding", "retention", "promo", "partnership"]),
)
def test_any_merchant_and_topic_round_trips(merchant_id, topic):
    signer = Signer({1: "k"})
    assert signer.verify(signer.token(merchant_id, topic)) == Unsubscribe(merchant_id, topic, 1)


def test_urls():
    assert (
        unsubscribe_url("https://crm.example.id/", "42.promo.1.abc")
        == "https://crm.example.id/u/42.promo.1.abc"
    )
    assert unsubscribe_mailto("unsubscribe@example.id", "42.promo.1.abc") == (
        "mailto:unsubscribe@example.id?subject=unsubscribe%2042.promo.1.abc"
    )


def test_settings_key_and_development_key(tmp_path):
    with_key = load_settings(tmp_path, env={"CAMPAIGN_SECRET_KEY": "prod-key"})
    token = signer_for(with_key, sending=True).token(7, "promo")
    assert verify_token(with_key, token).merchant_id == 7
    without = load_settings(tmp_path, env={})
    dev = signer_for(without)
    assert dev.development and dev.keys[1] == DEVELOPMENT_KEY
    with pytest.raises(TokenError):
        verify_token(with_key, dev.token(7, "promo"))
    with pytest.raises(DeliveryError, match="CAMPAIGN_SECRET_KEY"):
        signer_for(without, sending=True)
    # Without the key nothing verifies, not even a token made with the public development key.
    with pytest.raises(TokenError, match="CAMPAIGN_SECRET_KEY is not set"):
        verify_token(without, dev.token(7, "promo"))
