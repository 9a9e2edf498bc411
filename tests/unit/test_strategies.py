"""Routing strategies: the built-ins' exact distributions, the health and failover rules, by_model's
lookups and listings, the registry, and plugin loading with errors that name file and line.

Pure functions of their inputs: no trio, no I/O.
"""

from __future__ import annotations

import inspect
import json
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from hestia.errors import error_response
from hestia.routing import (
    BackendView,
    Decision,
    NoRoute,
    Registry,
    RequestContext,
    Strategy,
    StrategyError,
    default_registry,
    eligible,
    load_plugins,
)
from hestia.routing import __all__ as routing_all

REPO = Path(__file__).resolve().parents[2]
BALANCERS = ["round_robin", "weighted", "least_inflight", "first_ready"]


def view(name: str, state: str = "READY", *, in_flight: int = 0, healthy: bool = True,
         weight: int = 1) -> BackendView:
    return BackendView(name, state, in_flight, healthy, None, weight)


def ctx(method: str = "POST", path: str = "/", *, body: object = None,
        headers: dict[str, str] | None = None, client: str | None = "10.0.0.1") -> RequestContext:
    return RequestContext(method, path, "", headers or {}, client, body)


def make(name: str, backends=("a", "b", "c"), **options) -> Strategy:
    return default_registry().create(name, options, list(backends))


ABC = [view("a"), view("b"), view("c")]


def picks(strategy: Strategy, views, n: int, **kw) -> list[str]:
    return [strategy.pick(ctx(), views, **kw).backend for _ in range(n)]


def test_public_surface_is_sorted_and_complete():
    import hestia.routing as routing

    assert routing_all == sorted(routing_all)
    assert {n for n in dir(routing) if not n.startswith("_")} - {"builtin", "strategy", "router"} \
        == set(routing_all)


# --- round_robin -----------------------------------------------------------------------------

def test_round_robin_takes_turns_in_configured_order():
    rr = make("round_robin")
    got = picks(rr, ABC, 300)
    assert got == ["a", "b", "c"] * 100
    assert Counter(got) == {"a": 100, "b": 100, "c": 100}
    assert rr.pick(ctx(), ABC) == Decision("a", "balance")


def test_round_robin_keeps_the_turn_of_others_when_one_drops_out():
    rr = make("round_robin")
    b_down = [view("a"), view("b", healthy=False), view("c")]
    assert picks(rr, ABC, 1) == ["a"]
    assert picks(rr, b_down, 3) == ["c", "a", "c"]
    assert picks(rr, ABC, 4) == ["a", "b", "c", "a"]


def test_round_robin_follows_configured_order_not_view_order():
    rr = make("round_robin")
    assert picks(rr, list(reversed(ABC)), 3) == ["a", "b", "c"]


# --- weighted --------------------------------------------------------------------------------

def test_weighted_is_smooth_like_nginx():
    w = make("weighted")
    views = [view("a", weight=5), view("b", weight=1), view("c", weight=1)]
    got = picks(w, views, 700)
    assert got[:7] == ["a", "a", "b", "a", "c", "a", "a"]
    assert got == got[:7] * 100
    assert Counter(got) == {"a": 500, "b": 100, "c": 100}


def test_weighted_spreads_over_the_healthy_ones_only():
    w = make("weighted")
    views = [view("a", weight=5, healthy=False), view("b", weight=2), view("c", weight=1)]
    got = picks(w, views, 300)
    assert Counter(got) == {"b": 200, "c": 100}
    assert got[:3] == ["b", "c", "b"]


# --- least_inflight --------------------------------------------------------------------------

def test_least_inflight_picks_the_least_busy():
    li = make("least_inflight")
    views = [view("a", in_flight=3), view("b", in_flight=1), view("c", in_flight=2)]
    assert li.pick(ctx(), views) == Decision("b", "balance")


def test_least_inflight_rotates_among_ties_by_default():
    li = make("least_inflight")
    assert picks(li, ABC, 6) == ["a", "b", "c", "a", "b", "c"]
    busy_a = [view("a", in_flight=1), view("b"), view("c")]
    assert picks(li, busy_a, 3) == ["b", "c", "b"]


def test_least_inflight_tie_break_order_takes_the_first():
    li = make("least_inflight", tie_break="order")
    assert picks(li, ABC, 3) == ["a", "a", "a"]
    assert picks(li, [view("a", in_flight=1), view("b"), view("c")], 2) == ["b", "b"]


def test_least_inflight_refuses_an_unknown_tie_break():
    with pytest.raises(StrategyError, match="tie_break"):
        make("least_inflight", tie_break="random")


# --- first_ready -----------------------------------------------------------------------------

def test_first_ready_prefers_a_ready_backend_over_waking_the_first():
    fr = make("first_ready")
    views = [view("a", "COLD"), view("b", "READY"), view("c", "READY")]
    assert fr.pick(ctx(), views) == Decision("b", "ready")


def test_first_ready_wakes_the_first_eligible_when_none_is_ready():
    fr = make("first_ready")
    views = [view("a", "COLD", healthy=False), view("b", "STOPPING"), view("c", "COLD")]
    assert fr.pick(ctx(), views) == Decision("b", "first")
    assert fr.pick(ctx(), [view("a", "COLD"), view("b", "STARTING")]) == Decision("a", "first")


def test_first_ready_skips_a_ready_but_unhealthy_backend():
    fr = make("first_ready")
    views = [view("a", "READY", healthy=False), view("b", "COLD"), view("c", "READY")]
    assert fr.pick(ctx(), views) == Decision("c", "ready")


# --- health and failover, for every balancing built-in ---------------------------------------

@pytest.mark.parametrize("name", BALANCERS)
def test_unhealthy_and_failed_backends_are_skipped_while_one_is_healthy(name):
    s = make(name)
    views = [view("a", healthy=False), view("b", "FAILED"), view("c", "COLD")]
    assert set(picks(s, views, 30)) == {"c"}


@pytest.mark.parametrize("name", BALANCERS)
def test_all_backends_are_candidates_when_none_is_healthy(name):
    s = make(name)
    views = [view("a", "COLD", healthy=False), view("b", "FAILED"), view("c", healthy=False)]
    got = picks(s, views, 30)
    expected = {"first_ready": {"c"}}.get(name, {"a", "b", "c"})  # c is the one READY
    assert set(got) == expected


@pytest.mark.parametrize("name", BALANCERS)
def test_excluded_backends_are_never_picked(name):
    s = make(name)
    decisions = [s.pick(ctx(), ABC, exclude=frozenset({"a"})) for _ in range(30)]
    assert {d.backend for d in decisions} == ({"b"} if name == "first_ready" else {"b", "c"})
    assert {d.reason for d in decisions} == {"failover"}
    views = [view("a"), view("b", healthy=False), view("c")]
    assert s.pick(ctx(), views, exclude=frozenset({"c"})).backend == "a"


@pytest.mark.parametrize("name", BALANCERS)
def test_everything_excluded_is_no_route(name):
    with pytest.raises(NoRoute) as info:
        make(name).pick(ctx(), ABC, exclude=frozenset({"a", "b", "c"}))
    assert (info.value.status, info.value.code) == (503, "no_backend")
    assert info.value.retry_after is not None


def test_eligible_keeps_order_and_health_rule():
    views = [view("c"), view("a", healthy=False), view("b")]
    assert [v.name for v in eligible(views)] == ["c", "b"]
    assert [v.name for v in eligible(views, frozenset({"c", "b"}))] == ["a"]


@pytest.mark.parametrize("name", BALANCERS)
def test_balancers_take_no_options(name):
    with pytest.raises(StrategyError, match=f"unknown option.*bogus.*{name}"):
        make(name, bogus=1)


# --- by_model --------------------------------------------------------------------------------

MODELS = {"llama3:8b": "a", "mistral": "b", "qwen:latest": "c"}
ALIASES = {"gpt-4": "llama3:8b", "fast": "mistral"}


def by_model(**options):
    return make("by_model", map=MODELS, aliases=ALIASES, **options)


def route(strategy, body=None, headers=None, views=ABC, **kw) -> Decision:
    return strategy.pick(ctx(body=body, headers=headers), views, **kw)


def test_by_model_needs_the_body():
    assert by_model().needs_body is True
    assert make("round_robin").needs_body is False


@pytest.mark.parametrize(("model", "decision"), [
    ("llama3:8b", Decision("a", "map")),
    ("mistral", Decision("b", "map")),
    ("gpt-4", Decision("a", "alias")),
    ("fast", Decision("b", "alias")),
    ("mistral:latest", Decision("b", "map")),  # the implicit :latest tag, both ways
    ("qwen", Decision("c", "map")),
    ("fast:latest", Decision("b", "alias")),
])
def test_by_model_maps_models_aliases_and_tags(model, decision):
    assert route(by_model(), {"model": model}) == decision


def test_by_model_reads_the_header_before_the_body():
    s = by_model(header="X-Model")
    assert route(s, {"model": "llama3:8b"}, {"x-model": "mistral"}) == Decision("b", "map")
    assert route(s, {"model": "llama3:8b"}, {"x-model": "  "}) == Decision("a", "map")
    assert route(s, None, {"x-model": "gpt-4"}) == Decision("a", "alias")


def test_by_model_follows_a_dotted_field():
    s = by_model(field="options.model")
    assert route(s, {"options": {"model": "qwen"}}) == Decision("c", "map")
    with pytest.raises(NoRoute, match="names no model"):
        route(s, {"model": "qwen"})


def test_by_model_sends_unknown_and_missing_models_to_the_default():
    s = by_model(default="c")
    assert route(s, {"model": "phi3"}) == Decision("c", "default")
    assert route(s, None) == Decision("c", "default")
    assert route(s, {"model": 42}) == Decision("c", "default")
    assert route(s, {"model": "mistral"}) == Decision("b", "map")


def test_by_model_unknown_model_is_404_listing_the_known_names():
    with pytest.raises(NoRoute) as info:
        route(by_model(), {"model": "phi3"})
    error = info.value
    assert (error.status, error.code) == (404, "unknown_model")
    assert "phi3" in error.detail
    known = ["fast", "gpt-4", "llama3:8b", "mistral", "qwen:latest"]
    assert error.extra["models"] == known
    error.service = "llm"
    status, _, body = error_response(error, "req-1")
    assert status == 404
    assert json.loads(body) == {"error": "unknown_model", "detail": error.detail,
                                "service": "llm", "request_id": "req-1", "model": "phi3",
                                "models": known}


def test_by_model_without_a_model_is_404_naming_where_it_looked():
    with pytest.raises(NoRoute, match="header 'x-model' or body field 'model'") as info:
        route(by_model(header="x-model"), None)
    assert info.value.status == 404


@pytest.mark.parametrize(("options", "message"), [
    ({"map": {"llama3": "z"}}, r"map\['llama3'\]: unknown backend 'z'"),
    ({"map": MODELS, "aliases": {"gpt-4": "phi3"}}, r"aliases\['gpt-4'\]: unknown model 'phi3'"),
    ({"map": MODELS, "aliases": {"mistral": "qwen"}}, "already a model"),
    ({"map": MODELS, "default": "z"}, "default: unknown backend 'z'"),
    ({}, "map is required"),
    ({"map": {}}, "at least one model"),
    ({"map": ["llama3"]}, "map must be a mapping"),
    ({"map": MODELS, "field": "options..model"}, "field must be a dotted name"),
    ({"map": MODELS, "header": ""}, "header must be a header name"),
    ({"map": {"llama3": "a", "llama3:latest": "b"}}, "same model for Ollama"),
    ({"map": MODELS, "modle": "x"}, "unknown option.*modle"),
])
def test_by_model_option_errors_are_caught_at_creation(options, message):
    with pytest.raises(StrategyError, match=message) as info:
        make("by_model", **options)
    assert str(info.value).startswith("strategy 'by_model': ")


def test_by_model_reports_every_option_error_at_once():
    with pytest.raises(StrategyError) as info:
        make("by_model", map={"x": "z"}, default="y")
    assert "unknown backend 'z'" in str(info.value) and "'y'" in str(info.value)


def test_by_model_alias_may_name_a_model_by_its_untagged_name():
    s = make("by_model", map={"llama3:latest": "a"}, aliases={"big": "llama3"})
    assert route(s, {"model": "big"}) == Decision("a", "alias")


def test_by_model_fails_over_to_the_default_only():
    s = by_model(default="c")
    assert route(s, {"model": "mistral"}, exclude=frozenset({"b"})) == Decision("c", "failover")
    assert route(s, {"model": "mistral"}, exclude=frozenset({"a"})) == Decision("b", "failover")
    for excluded, plain in [({"b", "c"}, s), ({"b"}, by_model())]:
        with pytest.raises(NoRoute) as info:
            route(plain, {"model": "mistral"}, exclude=frozenset(excluded))
        assert (info.value.status, info.value.code) == (503, "no_backend")
    with pytest.raises(NoRoute, match="'c' failed and no other backend serves model 'phi3'"):
        route(s, {"model": "phi3"}, exclude=frozenset({"c"}))


def test_by_model_routes_around_an_unhealthy_backend_to_a_healthy_default():
    b_down = [view("a"), view("b", "FAILED"), view("c")]
    assert route(by_model(default="c"), {"model": "fast"}, views=b_down) == \
        Decision("c", "failover")
    # No healthy alternative that serves it: the model's own backend is still the best bet.
    assert route(by_model(), {"model": "fast"}, views=b_down) == Decision("b", "alias")
    all_down = [view("a"), view("b", healthy=False), view("c", healthy=False)]
    assert route(by_model(default="c"), {"model": "fast"}, views=all_down) == \
        Decision("b", "alias")


def listing(strategy, path: str, method: str = "GET"):
    answer = strategy.answer(ctx(method, path, client=None), ABC)
    if answer is None:
        return None
    assert answer.status == 200
    assert ("content-type", "application/json") in answer.headers
    return json.loads(answer.body)


def test_by_model_answers_the_openai_model_listing_itself():
    known = ["fast", "gpt-4", "llama3:8b", "mistral", "qwen:latest"]
    for path in ("/v1/models", "/v1/models/", "/openai/v1/models"):
        payload = listing(by_model(), path)
        assert payload == {"object": "list", "data": [
            {"id": m, "object": "model", "created": 0, "owned_by": "hestia"} for m in known]}
    assert listing(by_model(), "/v1/models/gpt-4") == \
        {"id": "gpt-4", "object": "model", "created": 0, "owned_by": "hestia"}
    assert listing(by_model(), "/v1/models/phi3") is None
    openai = pytest.importorskip("openai")
    page = openai.types.Model.model_validate(listing(by_model(), "/v1/models")["data"][0])
    assert page.id == "fast"


def test_by_model_answers_the_ollama_tags_listing_itself():
    payload = listing(by_model(), "/api/tags")
    assert [m["name"] for m in payload["models"]] == \
        ["fast", "gpt-4", "llama3:8b", "mistral", "qwen:latest"]
    first = payload["models"][0]
    assert first["model"] == first["name"] == "fast"
    assert first["modified_at"] == "1970-01-01T00:00:00Z"
    assert (first["size"], first["digest"]) == (0, "")
    assert set(first["details"]) >= {"format", "family", "parameter_size", "quantization_level"}
    ollama_types = pytest.importorskip("ollama._types")
    parsed = ollama_types.ListResponse.model_validate(payload)
    assert [m.model for m in parsed.models][:2] == ["fast", "gpt-4"]


def test_by_model_routes_everything_else():
    s = by_model()
    assert listing(s, "/v1/models", method="POST") is None
    assert listing(s, "/api/chat") is None
    assert listing(s, "/api/tags/x") is None
    assert make("round_robin").answer(ctx("GET", "/v1/models"), ABC) is None


# --- registry --------------------------------------------------------------------------------

def test_registry_lists_and_describes_the_builtins():
    registry = default_registry()
    assert registry.names() == sorted(["by_model", *BALANCERS])
    described = {d["name"]: d for d in registry.describe()}
    assert described["weighted"]["origin"] == "builtin"
    assert described["weighted"]["doc"].startswith("Smooth weighted round robin")
    assert all(d["doc"] for d in described.values())


def test_unknown_strategy_lists_the_known_ones():
    with pytest.raises(StrategyError) as info:
        default_registry().create("round_robbin", {}, ["a"])
    assert str(info.value) == ("unknown strategy 'round_robbin'; known: by_model, first_ready, "
                               "least_inflight, round_robin, weighted")


def test_registering_a_name_twice_names_both_places():
    registry = default_registry()
    with pytest.raises(StrategyError) as info:
        line = inspect.currentframe().f_lineno + 1
        registry.register("weighted", lambda options, backends: None)
    message = str(info.value)
    assert message.startswith(f"{__file__}:{line}: strategy 'weighted' is already registered "
                              "(by builtin at ")
    assert "routing/builtin.py:" in message


def test_registry_refuses_a_factory_that_builds_no_strategy():
    registry = Registry()
    registry.register("nothing", lambda options, backends: object())
    with pytest.raises(StrategyError, match="lacks name, needs_body, answer, pick"):
        registry.create("nothing", {}, ["a"])
    registry.register("boom", lambda options, backends: {}["x"])
    with pytest.raises(StrategyError, match="'boom'.*failed to build: KeyError"):
        registry.create("boom", {}, ["a"])
    with pytest.raises(StrategyError, match="not callable"):
        registry.register("bad", "round_robin")


def test_create_ignores_the_name_key_of_the_config_block():
    strategy = default_registry().create("by_model", {"name": "by_model", "map": {"m": "a"}}, ["a"])
    assert route(strategy, {"model": "m"}) == Decision("a", "map")


def test_strategies_keep_their_own_state_per_service():
    registry = default_registry()
    one, two = (registry.create("round_robin", {}, ["a", "b", "c"]) for _ in range(2))
    assert picks(one, ABC, 2) == ["a", "b"]
    assert picks(two, ABC, 1) == ["a"]
    assert repr(one) == "<RoundRobin a b c>"


# --- plugins ---------------------------------------------------------------------------------

GOOD = '''\
from __future__ import annotations

from dataclasses import dataclass

from hestia.routing import Decision, Strategy, eligible


@dataclass
class LastOne(Strategy):
    """Always the last eligible backend."""

    name: str = "last_one"

    def pick(self, ctx, backends, exclude=frozenset()):
        return Decision(eligible(backends, exclude)[-1].name, "last")


def last_one(options, backends):
    """The last eligible backend, in the order given."""
    return LastOne()


def register_strategy(registry):
    registry.register("last_one", last_one)
'''


def write(directory: Path, name: str, text: str) -> Path:
    path = directory / name
    path.write_text(textwrap.dedent(text))
    return path.resolve()


def test_a_good_plugin_loads_and_its_strategy_routes(tmp_path):
    good = write(tmp_path, "last.py", GOOD)
    write(tmp_path, "helpers.py", "VALUE = 1\n")  # no hook: ignored
    write(tmp_path, "_private.py", "raise RuntimeError('never imported')\n")
    (tmp_path / "notes.txt").write_text("not python")
    registry = default_registry()
    assert load_plugins(registry, tmp_path) == [good]
    strategy = registry.create("last_one", {}, ["a", "b", "c"])
    assert strategy.pick(ctx(), ABC) == Decision("c", "last")
    assert strategy.pick(ctx(), [view("a"), view("b"), view("c", "FAILED")]).backend == "b"
    assert strategy.answer(ctx(), ABC) is None and strategy.needs_body is False
    described = {d["name"]: d for d in registry.describe()}["last_one"]
    assert described == {"name": "last_one", "origin": str(good),
                         "doc": "The last eligible backend, in the order given."}


def test_the_same_plugin_directory_can_be_loaded_into_two_registries(tmp_path):
    write(tmp_path, "last.py", GOOD)
    first, second = default_registry(), default_registry()
    load_plugins(first, tmp_path)
    load_plugins(second, tmp_path)
    assert "last_one" in first and "last_one" in second


def test_a_plugin_file_name_need_not_be_a_module_name(tmp_path):
    odd = write(tmp_path, "my-plugin.v2.py", GOOD)
    assert load_plugins(default_registry(), tmp_path) == [odd]


def test_a_missing_plugin_directory_loads_nothing(tmp_path):
    assert load_plugins(default_registry(), tmp_path / "absent") == []


def test_a_plugin_raising_at_import_names_the_file_and_line(tmp_path):
    broken = write(tmp_path, "broken.py", """\
        import os

        THRESHOLD = undefined_name + 1


        def register_strategy(registry):
            pass
    """)
    with pytest.raises(StrategyError) as info:
        load_plugins(default_registry(), tmp_path)
    assert str(info.value).startswith(f"{broken}:3: strategy plugin failed to import: NameError")
    assert "undefined_name" in str(info.value)


def test_a_plugin_with_a_syntax_error_names_the_file_and_line(tmp_path):
    broken = write(tmp_path, "syntax.py", """\
        def register_strategy(registry):
            pass


        def oops(:
            pass
    """)
    with pytest.raises(StrategyError) as info:
        load_plugins(default_registry(), tmp_path)
    assert str(info.value).startswith(f"{broken}:5: strategy plugin failed to import: SyntaxError")


def test_a_plugin_whose_hook_raises_names_the_line_in_the_plugin(tmp_path):
    broken = write(tmp_path, "hook.py", """\
        def helper():
            return {}["missing"]


        def register_strategy(registry):
            registry.register("fine", lambda options, backends: None)
            helper()
    """)
    registry = default_registry()
    with pytest.raises(StrategyError) as info:
        load_plugins(registry, tmp_path)
    assert str(info.value).startswith(f"{broken}:2: strategy plugin register_strategy failed: "
                                      "KeyError")
    assert "fine" not in registry  # a failing plugin leaves nothing half-registered


def test_a_plugin_taking_a_builtin_name_names_its_file_and_line(tmp_path):
    dup = write(tmp_path, "dup.py", """\
        from hestia.routing.builtin import round_robin


        def register_strategy(registry):
            registry.register("mine", round_robin)
            registry.register("round_robin", round_robin)
    """)
    registry = default_registry()
    with pytest.raises(StrategyError) as info:
        load_plugins(registry, tmp_path)
    message = str(info.value)
    assert message.startswith(f"{dup}:6: strategy 'round_robin' is already registered "
                              "(by builtin at ")
    assert "builtin.py:" in message
    assert "mine" not in registry


def test_two_plugins_with_one_name_name_both_files(tmp_path):
    first = write(tmp_path, "a_first.py", GOOD)
    second = write(tmp_path, "b_second.py", GOOD)
    with pytest.raises(StrategyError) as info:
        load_plugins(default_registry(), tmp_path)
    hook_line = GOOD.splitlines().index('    registry.register("last_one", last_one)') + 1
    assert str(info.value) == (f"{second}:{hook_line}: strategy 'last_one' is already registered"
                               f" (by {first} at {first}:{hook_line})")


def test_the_example_sticky_plugin_loads_and_keeps_clients_on_one_backend():
    registry = default_registry()
    loaded = load_plugins(registry, REPO / "strategies")
    assert REPO / "strategies" / "example_sticky.py" in loaded
    sticky = registry.create("sticky_client", {}, ["a", "b", "c"])
    clients = [f"10.0.0.{i}" for i in range(60)]
    first = {c: sticky.pick(ctx(client=c), ABC).backend for c in clients}
    assert first == {c: sticky.pick(ctx(client=c), ABC).backend for c in clients}
    assert set(first.values()) == {"a", "b", "c"}
    # b goes down: only b's clients move.
    b_down = [view("a"), view("b", healthy=False), view("c")]
    moved = {c: sticky.pick(ctx(client=c), b_down).backend for c in clients}
    assert {c for c in clients if moved[c] != first[c]} == {c for c in clients
                                                              if first[c] == "b"}
    header = registry.create("sticky_client", {"header": "X-Session"}, ["a", "b", "c"])
    pinned = {header.pick(ctx(client=c, headers={"x-session": "s1"}), ABC).backend
              for c in clients}
    assert len(pinned) == 1
    with pytest.raises(StrategyError, match="unknown option"):
        registry.create("sticky_client", {"key": "x"}, ["a"])
