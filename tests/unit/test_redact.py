import logging

from defguard_entra import RedactingFilter, Secret

API_TOKEN = "dg-" + "A1b2" * 8
ENROLLMENT = "Zz9" * 10 + "Qq"


def test_known_and_shaped_secrets_are_masked():
    f = RedactingFilter(["my-very-secret-value"])
    text = f"api {API_TOKEN} enrol {ENROLLMENT} header Bearer eyJhbGciOi.abc.def other my-very-secret-value"
    out = f.redact(text)
    assert API_TOKEN not in out
    assert ENROLLMENT not in out
    assert "eyJhbGciOi" not in out
    assert "my-very-secret-value" not in out
    assert "api ***" in out


def test_filter_masks_args_and_exceptions(caplog):
    logger = logging.getLogger("test.redact")
    f = RedactingFilter([API_TOKEN])
    caplog.handler.addFilter(f)
    try:
        logger.warning("token %s", API_TOKEN)
        try:
            raise ValueError(API_TOKEN)
        except ValueError:
            logger.exception("boom")
    finally:
        caplog.handler.removeFilter(f)
    assert API_TOKEN not in caplog.text
    assert "token ***" in caplog.text


def test_secret_repr_never_shows_value():
    s = Secret("abcdefgh")
    assert "abcdefgh" not in repr(s)
    assert "abcdefgh" not in str(s)
    assert s.masked() == "abcd…"
    assert repr({"t": s}) == "{'t': Secret(***)}"


TOKEN_SHAPED = "A1b2" * 8  # 32 alphanumerics: what a Defguard enrollment token looks like


def test_a_token_shaped_word_stays_visible_where_it_is_not_a_secret():
    f = RedactingFilter()
    for text in (
        f"group {TOKEN_SHAPED!r} not found in Defguard",
        f"user {TOKEN_SHAPED}: no e-mail",
        f"--group-name {TOKEN_SHAPED}",
    ):
        assert f.redact(text) == text


def test_a_token_shaped_word_is_masked_where_the_text_names_a_token():
    f = RedactingFilter()
    cases = {
        f"token={TOKEN_SHAPED}": "token=***",
        f"https://enroll.example.com/?foo=1&token={TOKEN_SHAPED}": "https://enroll.example.com/?foo=1&token=***",
        f'{{"enrollment_token": "{TOKEN_SHAPED}", "x": 1}}': '{"enrollment_token": "***", "x": 1}',
        f"EnrollmentToken: {TOKEN_SHAPED}": "EnrollmentToken: ***",
        f"minted token {TOKEN_SHAPED} for alice": "minted token *** for alice",
        f"https://enroll.example.com/enrollment/{TOKEN_SHAPED}": "https://enroll.example.com/enrollment/***",
        f"client secret '{TOKEN_SHAPED}'": "client secret '***'",
    }
    for text, masked in cases.items():
        assert f.redact(text) == masked


def test_a_known_secret_is_masked_wherever_it_is_even_without_context():
    f = RedactingFilter([TOKEN_SHAPED])
    assert f.redact(f"group {TOKEN_SHAPED!r} not found") == "group '***' not found"
    assert f.redact(f"x{TOKEN_SHAPED}y") == "x***y"


def test_prefixed_and_bearer_shapes_need_no_other_context():
    f = RedactingFilter()
    assert f.redact(f"got dg-{TOKEN_SHAPED} here") == "got *** here"
    assert f.redact(f"Authorization: Bearer {TOKEN_SHAPED}") == "Authorization: Bearer ***"
    assert f.redact("seen eyJhbGciOi.eyJzdWIi.sig in a log") == "seen *** in a log"


def test_a_live_secret_is_masked_anywhere_without_registering_it() -> None:
    """A token the library minted or read (a live ``Secret``) is masked wherever a log line carries it, even with
    no word naming it; a token-shaped word that is no secret stays visible."""
    import gc

    from defguard_entra import Secret

    value = "Q7w2E9r4T1y6U3i8O5p0A2s7D4f9G1h6"
    other = "Z9x8C7v6B5n4M3l2K1j0H9g8F7d6S5a4"
    secret = Secret(value)
    redactor = RedactingFilter()
    assert redactor.redact(f"stored {value} for alice; group {other}") == f"stored *** for alice; group {other}"
    assert redactor.redact(f"https://e.example/{value}?x=1") == "https://e.example/***?x=1"
    del secret
    gc.collect()
    assert redactor.redact(f"stored {value}") == f"stored {value}"  # only live secrets: nothing is kept for ever
