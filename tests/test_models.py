import pytest

from moakit.errors import ModelError
from moakit.models import ALIASES, LOCAL_MODEL, check_keys, register_alias, resolve


def test_page_short_names_resolve():
    specs = resolve(["qwen1.5-110b-chat", "gpt-4.1", "claude-sonnet-4-5", "gemini-2.5-flash"])
    assert specs["qwen1.5-110b-chat"].model == "together_ai/Qwen/Qwen1.5-110B-Chat"
    assert specs["gpt-4.1"].provider == "openai"


def test_local_maps_every_agent_but_keeps_names():
    specs = resolve(["gpt-4.1", "anything-at-all"], "local")
    assert {s.model for s in specs.values()} == {LOCAL_MODEL}
    assert set(specs) == {"gpt-4.1", "anything-at-all"}


def test_unknown_alias_is_a_clear_error_with_suggestion():
    with pytest.raises(ModelError, match=r"unknown model 'qwen1.5-110b-chta'.*Did you mean qwen1.5-110b-chat"):
        resolve(["qwen1.5-110b-chta"])


def test_register_alias_extends_the_table(monkeypatch):
    monkeypatch.setitem(ALIASES, "x", "x")  # restore afterwards
    register_alias("my-llama", "ollama/llama3.1")
    try:
        assert resolve(["my-llama"])["my-llama"].model == "ollama/llama3.1"
    finally:
        ALIASES.pop("my-llama")


def test_missing_key_is_reported_before_any_call():
    specs = resolve(["gpt-4.1"])
    with pytest.raises(ModelError, match="OPENAI_API_KEY"):
        check_keys(specs, environ={})
    check_keys(specs, environ={"OPENAI_API_KEY": "sk-x"})  # present: fine
    # an agent with its own endpoint (vLLM, llama.cpp server) needs no provider key
    check_keys(resolve(["a"], {"a": {"model": "openai/m", "api_base": "http://127.0.0.1:1/v1"}}), environ={})


def test_models_dict_spec_keeps_key_out_of_repr():
    spec = resolve(["a"], {"a": {"model": "openai/m", "api_key": "sk-secret-value-123456"}})["a"]
    assert "sk-secret" not in repr(spec)
    assert spec.litellm_kwargs()["api_key"] == "sk-secret-value-123456"


def test_misspelt_models_key_warns_before_any_call():
    """A key of models= that nearly names an agent resolved by its own alias is probably a typo:
    the call would go to the alias's model, not the one mapped, so it warns (before any call)."""
    import warnings

    from moakit.models import ModelMappingWarning

    with pytest.warns(ModelMappingWarning, match="'gpt4o'"):
        specs = resolve(["gpt-4o", "llama-3.3-70b"], {"gpt4o": "openai/gpt-4o-mini", "llama-3.3-70b": "local"})
    assert specs["gpt-4o"].model == "openai/gpt-4o"  # what the alias says: hence the warning
    # keys matching no agent (one mapping shared by several pipelines) and a "*" default are fine
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        resolve(["gpt-4o"], {"gpt-4o": "local", "claude-sonnet-4": "local"})
        resolve(["gpt-4o"], {"gpt4o": "local", "*": "local"})
