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
