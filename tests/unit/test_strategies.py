"""Routing strategies: the built-ins' exact distributions, the health and failover rules, by_model's
lookups and listings, options checked against each strategy's model with errors at their paths,
the registry, and plugin loading with errors that name file and line.

Pure functions of their inputs: no trio, no I/O.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import textwrap
from collections import Counter
from pathlib import Path

import pytest

from hestia.config import RouteConfig, StrategyConfig
from hestia.errors import GatewayError, NoBackendLeft, UnknownModel, error_response
from hestia.routing import (
    BUILTINS,
    BackendView,
    Decision,
    NoRoute,
    Registry,
    RequestContext,
    Strategy,
    StrategyError,
    StrategyOptions,
    choose,
    default_registry,
    eligible,
    load_plugins,
)
from hestia.routing import __all__ as routing_all
from hestia.routing.registry import COMMON_KEYS
from hestia.routing.router import strategy_errors

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


def picks(strategy: Strategy, views, n: int, exclude=frozenset()) -> list[str]:
    return [choose(strategy, ctx(), views, exclude).backend for _ in range(n)]


def test_public_surface_is_sorted_and_complete():
    import hestia.routing as routing

    assert routing_all == sorted(routing_all)
    modules = {"builtin", "registry", "strategy", "router"}
    assert {n for n in dir(routing) if not n.startswith("_")} - modules == set(routing_all)


def test_the_routing_modules_import_each_other_one_way():
    """strategy.py (the contract) ← builtin.py ← registry.py ← router.py: no cycle."""
    package = REPO / "src" / "hestia" / "routing"
    imports = {}
    for path in package.glob("*.py"):
        tree = ast.parse(path.read_text())
        imports[path.stem] = {node.module for node in ast.walk(tree)
                              if isinstance(node, ast.ImportFrom) and node.level == 1}
    assert imports["strategy"] == set()
    assert imports["builtin"] == {"strategy"}
    assert imports["registry"] == {"builtin", "strategy"}
    assert imports["router"] == {"registry", "strategy"}


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
    with pytest.raises(StrategyError) as info:
        make("least_inflight", tie_break="random")
    assert info.value.errors == [("tie_break", "Input should be 'round_robin' or 'order'")]


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
    decisions = [choose(s, ctx(), ABC, frozenset({"a"})) for _ in range(30)]
    assert {d.backend for d in decisions} == ({"b"} if name == "first_ready" else {"b", "c"})
    assert {d.reason for d in decisions} == {"failover"}
    views = [view("a"), view("b", healthy=False), view("c")]
    assert choose(s, ctx(), views, frozenset({"c"})).backend == "a"


@pytest.mark.parametrize("name", BALANCERS)
def test_everything_excluded_is_no_route(name):
    with pytest.raises(NoRoute) as info:
        choose(make(name), ctx(), ABC, frozenset({"a", "b", "c"}))
    assert isinstance(info.value, NoBackendLeft)
    assert (info.value.status, info.value.code) == (503, "no_backend")
    assert info.value.retry_after is not None


def test_a_strategy_picking_a_backend_it_was_not_offered_is_a_500_not_a_retry_to_it():
    class Stubborn(Strategy):
        name = "stubborn"

        def pick(self, ctx, backends):
            return Decision("a", "stubborn")

    with pytest.raises(GatewayError) as info:
        choose(Stubborn(StrategyOptions(), ["a", "b"]), ctx(), ABC[:2], frozenset({"a"}))
    assert (info.value.status, info.value.code) == (500, "internal_error")
    assert "picked 'a', which is not one of the backends offered (b)" in info.value.detail


def test_eligible_keeps_order_and_health_rule():
    views = [view("c"), view("a", healthy=False), view("b")]
    assert [v.name for v in eligible(views)] == ["c", "b"]
    assert [v.name for v in eligible(views, frozenset({"c", "b"}))] == ["a"]


@pytest.mark.parametrize("name", ["round_robin", "weighted", "first_ready"])
def test_balancers_take_no_options(name):
    with pytest.raises(StrategyError) as info:
        make(name, bogus=1)
    assert info.value.errors == [("bogus", f"unknown option 'bogus': {name} takes no options; "
                                           f"valid: name, max_body, unhealthy_for")]


def test_an_unknown_option_names_the_closest_and_every_valid_one():
    with pytest.raises(StrategyError) as info:
        make("least_inflight", tie_brake="order", unhealthy_fro="3s")
    assert info.value.errors == [
        ("tie_brake", "unknown option 'tie_brake' for least_inflight (did you mean 'tie_break'?); "
                      "valid: tie_break, name, max_body, unhealthy_for"),
        ("unhealthy_fro", "unknown option 'unhealthy_fro' for least_inflight (did you mean "
                          "'unhealthy_for'?); valid: tie_break, name, max_body, unhealthy_for"),
    ]
    assert str(info.value).startswith("strategy 'least_inflight': tie_brake: unknown option ")


def test_the_keys_common_to_every_strategy_are_the_strategy_configs():
    assert COMMON_KEYS == tuple(StrategyConfig.model_fields)


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
    assert isinstance(error, UnknownModel)
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


@pytest.mark.parametrize(("options", "path", "message"), [
    ({"map": {"llama3": "z"}}, "map.llama3", "unknown backend 'z' (backends: a, b, c)"),
    ({"map": MODELS, "aliases": {"gpt-4": "phi3"}}, "aliases",
     "'gpt-4' names unknown model 'phi3' (models: llama3:8b, mistral, qwen:latest)"),
    ({"map": MODELS, "aliases": {"mistral": "qwen"}}, "aliases",
     "'mistral' is already a model in map"),
    ({"map": MODELS, "default": "z"}, "default", "unknown backend 'z' (backends: a, b, c)"),
    ({}, "map", "required by by_model"),
    ({"map": {}}, "map", "must name at least one model: {model name: backend}"),
    ({"map": ["llama3"]}, "map", "Input should be a valid dictionary"),
    ({"map": {"": "a"}}, "map['']", "String should have at least 1 character"),
    ({"map": {"v1.5": "z"}}, "map['v1.5']", "unknown backend 'z' (backends: a, b, c)"),
    ({"map": MODELS, "field": "options..model"}, "field",
     "must be a dotted name like 'model' or 'options.model', not 'options..model'"),
    ({"map": MODELS, "header": " "}, "header", "must be a header name, not ' '"),
    ({"map": {"llama3": "a", "llama3:latest": "b"}}, "map",
     "'llama3' and 'llama3:latest' are the same model for Ollama but go to different backends"),
    ({"map": MODELS, "modle": "x"}, "modle", "unknown option 'modle' for by_model; "
     "valid: field, header, map, aliases, default, name, max_body, unhealthy_for"),
])
def test_by_model_option_errors_are_caught_at_creation_at_their_path(options, path, message):
    with pytest.raises(StrategyError) as info:
        make("by_model", **options)
    assert info.value.errors == [(path, message)]
    assert str(info.value) == f"strategy 'by_model': {path}: {message}"


def test_by_model_reports_every_option_error_at_once():
    with pytest.raises(StrategyError) as info:
        make("by_model", map={"x": "z", "y": "a"}, default="y", bogus=1)
    assert [path for path, _ in info.value.errors] == ["map.x", "default", "bogus"]


def test_strategy_errors_are_reported_at_the_options_path_in_the_file():
    def route_config(**strategy):
        return RouteConfig(backends=["llm@a", "llm@b"], strategy=StrategyConfig(**strategy))

    routes = {"llm": route_config(name="by_model", map={"llama3": "c"}, defualt="a"),
              "web": route_config(name="round_robbin"),
              "ok": route_config(name="least_inflight", tie_break="order")}
    assert strategy_errors(routes, default_registry()) == [
        ("services.llm.strategy.map.llama3", "unknown backend 'c' (backends: a, b)"),
        ("services.llm.strategy.defualt", "unknown option 'defualt' for by_model (did you mean "
         "'default'?); valid: field, header, map, aliases, default, name, max_body, "
         "unhealthy_for"),
        ("services.web.strategy", "unknown strategy 'round_robbin'; known: by_model, "
         "first_ready, least_inflight, round_robin, weighted"),
    ]


def test_by_model_normalises_the_header_and_resolves_aliases_at_load():
    s = make("by_model", map={"llama3:latest": "a"}, aliases={"big": "llama3"}, header=" X-Model ")
    assert s.options.header == "x-model"
    assert s.options.aliases == {"big": "llama3:latest"}


def test_by_model_alias_may_name_a_model_by_its_untagged_name():
    s = make("by_model", map={"llama3:latest": "a"}, aliases={"big": "llama3"})
    assert route(s, {"model": "big"}) == Decision("a", "alias")


def retry(strategy, body, exclude, views=ABC) -> Decision:
    return choose(strategy, ctx(body=body), views, frozenset(exclude))


def test_by_model_fails_over_to_the_default_only():
    s = by_model(default="c")
    assert retry(s, {"model": "mistral"}, {"b"}) == Decision("c", "failover")
    assert retry(s, {"model": "mistral"}, {"a"}) == Decision("b", "failover")
    for excluded, plain in [({"b", "c"}, s), ({"b"}, by_model())]:
        with pytest.raises(NoRoute) as info:
            retry(plain, {"model": "mistral"}, excluded)
        assert (info.value.status, info.value.code) == (503, "no_backend")
    with pytest.raises(NoRoute, match="'c' failed and no other backend serves model 'phi3'"):
        retry(s, {"model": "phi3"}, {"c"})


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
    import openai
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
    import ollama._types as ollama_types
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
    assert re.search(r"routing/builtin\.py:\d+\)$", message)  # where the class is


def test_registry_refuses_a_strategy_class_that_breaks_the_contract():
    class NoPick(Strategy):
        name = "no_pick"

    class Unnamed(Strategy):
        def pick(self, ctx, backends):
            return Decision(backends[0].name, "first")

    class Lax(StrategyOptions):
        model_config = {"extra": "allow"}

    class LaxOptions(Unnamed):
        name = "lax"
        Options = Lax

    registry = Registry()
    with pytest.raises(StrategyError, match="NoPick does not define pick"):
        registry.register(NoPick)
    with pytest.raises(StrategyError, match="Unnamed.name must be a non-empty string"):
        registry.register(Unnamed)
    with pytest.raises(StrategyError, match="LaxOptions.Options must be a hestia.routing."
                                            "StrategyOptions model"):
        registry.register(LaxOptions)
    with pytest.raises(StrategyError, match="register a subclass of hestia.routing.Strategy"):
        registry.register(Decision)
    assert registry.names() == []


def test_every_builtin_documents_each_of_its_options_and_the_docs_list_them():
    docs = (REPO / "docs" / "strategies.md").read_text()
    for strategy in BUILTINS:
        assert f"| `{strategy.name}` |" in docs
        for option, field in strategy.Options.model_fields.items():
            assert field.description, f"{strategy.name}.{option} has no docstring"
            row = f"| `{strategy.name}` | `{option}` | "
            assert row in docs, f"docs/strategies.md has no row for {strategy.name}.{option}"


def test_the_example_in_the_plugin_readme_works_as_it_says(tmp_path):
    readme = (REPO / "strategies" / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", readme, re.DOTALL).group(1)
    write(tmp_path, "prefer.py", code)
    registry = default_registry()
    load_plugins(registry, tmp_path)
    prefer = registry.create("prefer", {"name": "prefer", "backend": "b"}, ["a", "b", "c"])
    assert choose(prefer, ctx(), ABC) == Decision("b", "preferred")
    assert choose(prefer, ctx(), ABC, frozenset({"b"})) == Decision("a", "failover")
    with pytest.raises(StrategyError) as info:
        registry.create("prefer", {"reasn": "x"}, ["a", "b"])
    assert info.value.errors == [
        ("backend", "required by prefer"),
        ("reasn", "unknown option 'reasn' for prefer (did you mean 'reason'?); valid: backend, "
                  "reason, name, max_body, unhealthy_for")]


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

from hestia.routing import BackendName, Decision, Strategy, StrategyOptions, eligible


class LastOneOptions(StrategyOptions):
    unless: BackendName | None = None
    """Never this backend while another is eligible."""


class LastOne(Strategy):
    """The last eligible backend, in the order given."""

    name = "last_one"
    Options = LastOneOptions

    def pick(self, ctx, backends):
        names = [b.name for b in eligible(backends) if b.name != self.options.unless]
        return Decision(names[-1] if names else backends[-1].name, "last")


def register_strategy(registry):
    registry.register(LastOne)
'''

# The contract before options models: a name and a factory given a plain mapping, and a pick
# that takes `exclude`. Plugins written for it keep working.
OLDER = '''\
from hestia.routing import Decision, eligible


class Older:
    name = "older"
    needs_body = False

    def answer(self, ctx, backends):
        return None

    def pick(self, ctx, backends, exclude=frozenset()):
        return Decision(eligible(backends, exclude)[0].name, "older")


def older(options, backends):
    """The first eligible backend."""
    if options:
        raise ValueError(f"no options, please: {sorted(options)}")
    return Older()


def register_strategy(registry):
    registry.register("older", older)
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
    assert choose(strategy, ctx(), ABC, frozenset({"c"})) == Decision("b", "failover")
    assert strategy.answer(ctx(), ABC) is None and strategy.needs_body is False
    unless = registry.create("last_one", {"unless": "c"}, ["a", "b", "c"])
    assert unless.pick(ctx(), ABC) == Decision("b", "last")
    with pytest.raises(StrategyError) as info:
        registry.create("last_one", {"unless": "z"}, ["a", "b", "c"])
    assert info.value.errors == [("unless", "unknown backend 'z' (backends: a, b, c)")]
    described = {d["name"]: d for d in registry.describe()}["last_one"]
    assert described == {"name": "last_one", "origin": str(good),
                         "doc": "The last eligible backend, in the order given."}


def test_a_plugin_written_for_the_older_factory_contract_still_loads(tmp_path):
    older = write(tmp_path, "older.py", OLDER)
    registry = default_registry()
    assert load_plugins(registry, tmp_path) == [older]
    strategy = registry.create("older", {}, ["a", "b", "c"])
    assert choose(strategy, ctx(), ABC) == Decision("a", "older")
    assert choose(strategy, ctx(), ABC, frozenset({"a"})) == Decision("b", "failover")
    with pytest.raises(StrategyError, match=r"strategy 'older': no options, please: \['x'\]"):
        registry.create("older", {"x": 1}, ["a"])


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
        from hestia.routing import RoundRobin


        def register_strategy(registry):
            registry.register("mine", lambda options, backends: RoundRobin(options, backends))
            registry.register(RoundRobin)
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
    lines = GOOD.splitlines()
    hook_line = lines.index("    registry.register(LastOne)") + 1
    class_line = lines.index("class LastOne(Strategy):") + 1
    assert str(info.value) == (f"{second}:{hook_line}: strategy 'last_one' is already registered"
                               f" (by {first} at {first}:{class_line})")


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
    with pytest.raises(StrategyError) as info:
        registry.create("sticky_client", {"key": "x"}, ["a"])
    assert info.value.errors == [("key", "unknown option 'key' for sticky_client; valid: header, "
                                         "name, max_body, unhealthy_for")]
