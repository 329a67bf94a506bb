"""Quality benchmark (`make eval`): every recipe against every single model behind it.

For each scenario (integration/bench/scenarios/*.json) the harness:
1. generates an item bank from a seed (multiple-choice items with permuted option letters and
   exact-answer items, each carrying only an opaque `[item:TAG]` in the prompt; the key lives in
   the simulator and here);
2. tunes what an operator would tune on a separate dev split (Ratings weights from measured
   accuracy, the Confidence threshold), never on the test items;
3. sends every test item through real Envoy with the plugin, once per arm (each single model
   passed through untouched, each recipe), with bounded concurrency;
4. scores the final answers, sums cost from the simulator's own usage log and checks the
   gateway's reported usage against it, item by item;
5. prints and writes (results/) a Markdown table with Wilson 95% intervals, a paired McNemar test
   against the best single model, cost, calls and p50/p95 latency, closed-form theory
   references, and a cost-accuracy SVG.

A scenario with `categories` draws task-shaped items (each category its share, difficulty,
attraction and prompt templates, and optionally a simulator topic that selects the models'
`topic_skills`) and is also reported per category, on test and on dev. A
scenario with a `router` adds the arm `eval/auto`: the plugin's auto router with the scenario's
decisions over the shipped signals and projections (filters/auto.json), its router-only recipes
run as fixed arms too; the report gives the category → decision counts and auto against the
best fixed recipe. Without a router in filters/auto.json, or with a plugin build that refuses
one, the auto arm is skipped with a warning (`--require-auto` makes that an error).

Controls (`--controls`, on by default) check that the benchmark cannot be passed by tuning: an
all-random pool scores 1/K, clones of one deterministic model cannot beat it, scaling prices by c
scales cost by c, and renaming models or permuting options leaves accuracy unchanged.
"""

import argparse
import concurrent.futures
import copy
import json
import math
import random
import re
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "e2e"))
from conftest import ROOT, Stack  # noqa: E402

HERE = Path(__file__).resolve().parent
SCENARIOS = HERE / "scenarios"
RESULTS = ROOT / "results"
SHIPPED = ROOT / "filters" / "auto.json"
LETTERS = "ABCDEFGHIJ"
AUTO = "eval/auto"


# ---------------------------------------------------------------------------------- statistics

def wilson(k, n, z=1.96):
    if n == 0:
        return (0.0, 0.0)
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar(a, b):
    """Exact two-sided McNemar test of paired 0/1 outcomes: (b01, b10, p-value)."""
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    n = only_a + only_b
    if n == 0:
        return only_a, only_b, 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n
    return only_a, only_b, min(1.0, 2 * tail)


def percentile(values, q):
    if not values:
        return 0.0
    s = sorted(values)
    return s[min(len(s) - 1, int(q * len(s)))]


def sigmoid(x):
    return 1 / (1 + math.exp(-x))


# ------------------------------------------------------------------------------------ theory

def majority_iid(p, n):
    """Binary majority of n i.i.d. voters (Condorcet)."""
    return sum(math.comb(n, k) * p ** k * (1 - p) ** (n - k) for k in range(n // 2 + 1, n + 1))


def majority_correlated(p, n, r):
    """Normal approximation of a majority of n voters with pairwise correlation r."""
    if p in (0.0, 1.0):
        return p
    z = (p - 0.5) * math.sqrt(n) / math.sqrt(p * (1 - p) * (1 + (n - 1) * r))
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def weighted_vote_binary(ps):
    """Log-odds weighted vote of independent voters with symmetric binary errors."""
    ws = [math.log(p / (1 - p)) if 0 < p < 1 else 0.0 for p in ps]
    total = 0.0
    for mask in range(1 << len(ps)):
        prob, score = 1.0, 0.0
        for i, p in enumerate(ps):
            if mask >> i & 1:
                prob *= p
                score += ws[i]
            else:
                prob *= 1 - p
                score -= ws[i]
        if score > 1e-12:
            total += prob
        elif abs(score) <= 1e-12:
            total += prob / 2
    return total


# ---------------------------------------------------------------------------------- item bank

def make_bank(scenario, n, seed, prefix, permute=True):
    if "categories" in scenario:
        return make_category_bank(scenario, n, seed, prefix, permute)
    rng = random.Random(seed)
    k = scenario.get("options", 4)
    exact_share = scenario.get("exact_share", 0.0)
    diff = scenario.get("difficulty", {"mean": 0.0, "sd": 1.0})
    attraction = scenario.get("attraction", 0.0)
    items = []
    for i in range(n):
        tag = f"{prefix}{rng.getrandbits(48):012x}"
        difficulty = rng.gauss(diff["mean"], diff["sd"])
        if rng.random() < exact_share:
            key = str(rng.randint(2, 999))
            distractor = str(int(key) + rng.choice([-1, 1, 10]))
            entry = {"kind": "exact", "key": key, "difficulty": difficulty,
                     "distractor": distractor, "attraction": attraction}
            prompt = f"Compute the value asked for in problem {tag}. [item:{tag}]"
        else:
            letters = list(LETTERS[:k])
            if permute:
                rng.shuffle(letters)
            options = "".join(letters)
            key = rng.choice(options)
            distractor = rng.choice([o for o in options if o != key])
            entry = {"kind": "mc", "options": "".join(sorted(options)), "key": key,
                     "difficulty": difficulty, "distractor": distractor,
                     "attraction": attraction}
            listing = " ".join(f"{o}) option {j + 1}" for j, o in enumerate(options))
            prompt = f"Question {tag}: choose the correct option. {listing} [item:{tag}]"
        items.append({"tag": tag, "entry": entry, "prompt": prompt})
    return items


PLACEHOLDER = re.compile(r"\{(tag|options|n[1-9])\}")


def fill(template, values):
    """Fills `{tag}`, `{options}` and `{n1}`..`{n9}` only, so LaTeX braces stay as written
    (`\\frac{{n1}}{{n2}}` becomes `\\frac{7}{12}`)."""
    return PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def make_category_bank(scenario, n, seed, prefix, permute=True):
    """Task-shaped items: each draws a category by share, its difficulty and attraction from
    the category and its prompt from one of the category's templates. A template is a string
    or `{"text": ..., "options": [...]}` (option texts for `{options}`; else the category's
    `option_texts`, else "option 1".."option K"). The hidden numbers `{n1}`..`{n9}` are
    cosmetic: the key lives in the bank, as for every item. A category with `"topic": true`
    gives its items the simulator topic of its own name, `"topic": "<name>"` that topic (which
    selects each model's `topic_skills`); without it items have no topic (and the bank is
    byte-identical to one built before topics existed)."""
    rng = random.Random(seed)
    k = scenario.get("options", 4)
    categories = scenario["categories"]
    names = list(categories)
    total = sum(c["share"] for c in categories.values())
    topics = {name: category_topic(name, cat) for name, cat in categories.items()}
    for name, cat in categories.items():
        for t in cat["templates"]:
            text = t if isinstance(t, str) else t["text"]
            if "[item:{tag}]" not in text or (cat["kind"] == "mc") != ("{options}" in text):
                raise ValueError(f"category {name}: every template needs `[item:{{tag}}]`, "
                                 f"and `{{options}}` exactly when the kind is mc: {text!r}")
    items = []
    for i in range(n):
        tag = f"{prefix}{rng.getrandbits(48):012x}"
        u = rng.random() * total
        name = names[-1]
        for candidate in names:
            u -= categories[candidate]["share"]
            if u < 0:
                name = candidate
                break
        cat = categories[name]
        diff = cat.get("difficulty", scenario.get("difficulty", {"mean": 0.0, "sd": 1.0}))
        difficulty = rng.gauss(diff["mean"], diff["sd"])
        attraction = cat.get("attraction", scenario.get("attraction", 0.0))
        template = rng.choice(cat["templates"])
        text = template if isinstance(template, str) else template["text"]
        values = {"tag": tag, **{f"n{j}": str(rng.randint(2, 19)) for j in range(1, 10)}}
        if cat["kind"] == "exact":
            key = str(rng.randint(2, 999))
            distractor = str(int(key) + rng.choice([-1, 1, 10]))
            entry = {"kind": "exact", "key": key, "difficulty": difficulty,
                     "distractor": distractor, "attraction": attraction, "category": name}
        else:
            kk = cat.get("options", k)
            letters = LETTERS[:kk]
            pool = (template.get("options") if isinstance(template, dict) else None) \
                or cat.get("option_texts") or [f"option {j + 1}" for j in range(kk)]
            texts = rng.sample(pool, kk) if len(pool) >= kk else \
                pool + [f"option {j + 1}" for j in range(len(pool), kk)]
            if not permute:
                texts = sorted(texts)
            key = rng.choice(letters)
            distractor = rng.choice([o for o in letters if o != key])
            entry = {"kind": "mc", "options": letters, "key": key, "difficulty": difficulty,
                     "distractor": distractor, "attraction": attraction, "category": name}
            # Labels in order on their own lines, as real multiple-choice prompts list them.
            values["options"] = "\n".join(f"{o}) {t}" for o, t in zip(letters, texts))
        if topics[name] is not None:
            entry["topic"] = topics[name]
        items.append({"tag": tag, "entry": entry, "prompt": fill(text, values)})
    return items


TOPIC = re.compile(r"[A-Za-z0-9_-]{1,64}")


def category_topic(name, cat):
    """The simulator topic of a category's items: its own name for `"topic": true`, the given
    name for a string, none when absent or false."""
    topic = cat.get("topic", False)
    if topic is True:
        topic = name
    if topic is False or topic is None:
        return None
    if not isinstance(topic, str) or not TOPIC.fullmatch(topic):
        raise ValueError(f"category {name}: `topic` must be true, false or 1 to 64 of "
                         f"A-Z a-z 0-9 _ - (as the simulator's topics): {topic!r}")
    return topic


SIM_FIELDS = ("kind", "options", "key", "difficulty", "distractor", "attraction", "topic")


def write_bank(path, items):
    """The simulator's item bank (it refuses unknown fields such as `category`)."""
    path.write_text(json.dumps({"items": {
        it["tag"]: {k: v for k, v in it["entry"].items() if k in SIM_FIELDS} for it in items}}))


def category_of(item):
    return item["entry"].get("category")


ANSWER = re.compile(r"ANSWER:\s*\**\(?([^\n]*)", re.IGNORECASE)


def extract(content, entry):
    found = ANSWER.findall(content or "")
    if not found:
        return None
    raw = found[-1].strip().strip("*()[]. ").strip()
    if entry["kind"] == "mc":
        return raw[:1].upper() if raw else None
    return raw.replace(",", "").lower()


# ------------------------------------------------------------------------------------- configs

def sim_config(scenario, seed, rename=None):
    sim = copy.deepcopy(scenario["sim"])
    sim["seed"] = seed
    if rename:
        sim["models"] = {rename.get(m, m): c for m, c in sim["models"].items()}
    return sim


def rename_recipe(recipe, rename):
    text = json.dumps(recipe)
    for old, new in rename.items():
        text = text.replace(f'"{old}"', f'"{new}"')
    return json.loads(text)


def contract_of(recipes):
    """The scenario's output contract (every recipe of a scenario uses the same one)."""
    for recipe in recipes.values():
        if "contract" in recipe:
            return recipe["contract"]
    return {"type": "exact"}


def scenario_recipes(scenario):
    """The fixed recipes, then the recipes only the router uses (every one of them is also run
    as its own arm, so the auto arm is compared with each recipe it can pick)."""
    recipes = copy.deepcopy(scenario["recipes"])
    extra = (scenario.get("router") or {}).get("recipes", {})
    clash = set(recipes) & set(extra)
    if clash:
        raise SystemExit(f"router recipes {sorted(clash)} are also fixed recipes")
    recipes.update(copy.deepcopy(extra))
    return recipes


class RouterUnavailable(Exception):
    pass


def router_config(scenario, recipe_names):
    """`routers.auto` for the plugin: the scenario's decisions, with its own signals and
    projections or else the shipped ones (filters/auto.json), so the benchmark exercises the
    router operators deploy. Raises RouterUnavailable when neither exists."""
    spec = scenario.get("router")
    if not spec:
        return None
    signals, projections = spec.get("signals"), spec.get("projections")
    if signals is None or projections is None:
        shipped = json.loads(SHIPPED.read_text()).get("routers", {}).get("auto")
        if not shipped:
            raise RouterUnavailable(
                f"{SHIPPED.relative_to(ROOT)} has no `routers.auto` (signals and projections) "
                f"and the scenario defines none, so there is no router to measure")
        signals = shipped.get("signals", {}) if signals is None else signals
        projections = shipped.get("projections", {}) if projections is None else projections
    unknown = sorted({d["recipe"] for d in spec["decisions"]} - set(recipe_names))
    if unknown:
        raise SystemExit(f"router decisions name unknown recipes {unknown}")
    return {"signals": signals, "projections": projections,
            "decisions": copy.deepcopy(spec["decisions"])}


def plugin_config(scenario, recipes, price_scale=1.0, rename=None, router=None):
    rename = rename or {}
    models = {}
    for name, sim_model in scenario["sim"]["models"].items():
        price = scenario["prices"][name]
        alias = rename.get(name, name)
        models[alias] = {
            "cluster": "simulator",
            "model": alias,
            "logprobs": sim_model.get("logprobs", True),
            "timeout_ms": 30000,
            "price": {"input_per_million": price["input_per_million"] * price_scale,
                      "output_per_million": price["output_per_million"] * price_scale},
        }
    recipes = {name: rename_recipe(r, rename) for name, r in recipes.items()}
    # Each model alone, through the plugin with the same output contract as the fixed recipes,
    # so single models and patterns get the same instructions and are priced alike.
    contract = contract_of(scenario["recipes"])
    virtual = {f"eval/{name}": {"recipe": name} for name in recipes}
    for alias in models:
        recipes[f"single-{alias}"] = {"algorithm": "single", "models": [alias],
                                       "contract": contract}
        virtual[alias] = {"recipe": f"single-{alias}"}
    config = {
        "models": models,
        "recipes": recipes,
        "virtual_models": virtual,
        "namespaces": ["eval/"],
        "limits": {"max_body_bytes": 1048576, "request_deadline_ms": 120000},
        "trace": {"allow": True},
    }
    if router is not None:
        config["routers"] = {"auto": router}
        virtual[AUTO] = {"router": "auto"}
    return config


# ------------------------------------------------------------------------------------- running

class Arm:
    def __init__(self, name, model, kind):
        self.name, self.model, self.kind = name, model, kind


def ask(stack, arm, item, trace=False):
    payload = {"model": arm.model, "messages": [{"role": "user", "content": item["prompt"]}]}
    headers = {"x-looper-trace": "1"} if trace else {}
    started = time.monotonic()
    try:
        status, h, body = stack.chat(payload, headers=headers)
    except OSError as e:
        return {"ok": False, "error": str(e), "latency": 0.0}
    latency = (time.monotonic() - started) * 1000
    if status != 200:
        return {"ok": False, "error": status, "latency": latency}
    reply = json.loads(body)
    content = reply["choices"][0]["message"].get("content") if reply.get("choices") else ""
    answer = extract(content, item["entry"])
    return {
        "ok": True,
        "correct": answer is not None and answer == item["entry"]["key"].lower()
        if item["entry"]["kind"] == "exact" else answer == item["entry"]["key"],
        "latency": latency,
        "tokens": reply.get("usage", {}).get("total_tokens", 0),
        "calls": int(h.get("x-looper-calls", "1")),
        "abandoned": int(h.get("x-looper-abandoned-calls", "0")),
        "escalated": escalated(reply.get("looper_trace")),
        "decision": h.get("x-looper-decision"),
        "recipe": h.get("x-looper-recipe"),
        "signals": [x.strip() for x in h.get("x-looper-signals", "").split(",") if x.strip()],
    }


def escalated(trace):
    """Whether a Confidence request went past its first candidate (None without a trace)."""
    if not trace:
        return None
    answers = [s for s in trace.get("steps", []) if s.get("role") == "answer"]
    return len(answers) > 1


def ask_traced(stack, arm, item):
    payload = {"model": arm.model, "messages": [{"role": "user", "content": item["prompt"]}]}
    status, _, body = stack.chat(payload, headers={"x-looper-trace": "1"})
    return json.loads(body).get("looper_trace") if status == 200 else None


def sim_get(stack, path):
    _, _, body = stack._http(stack.sim_port, "GET", path)
    return json.loads(body)


def sim_reset(stack):
    stack._http(stack.sim_port, "POST", "/sim/reset", body=b"")


def run_arm(stack, arm, items, prices, workers, trace=None):
    """Runs the items, one category after another (a single group without categories), so
    each category's cost comes from the simulator's own per-model counters. Returns the
    results, the total cost, the usage mismatches and the cost per category."""
    trace = arm.kind == "recipe" if trace is None else trace
    groups = {}
    for i, item in enumerate(items):
        groups.setdefault(category_of(item), []).append(i)
    results = [None] * len(items)
    costs = {}
    mismatched = 0
    unreported = 0
    for category, indices in groups.items():
        stack.sim_stats()  # settle: nothing of the previous group or arm still in flight
        sim_reset(stack)
        with concurrent.futures.ThreadPoolExecutor(workers) as pool:
            futures = {pool.submit(ask, stack, arm, items[i], trace): i for i in indices}
            for f in concurrent.futures.as_completed(futures):
                results[futures[f]] = f.result()
        stats = stack.sim_stats()
        usage = sim_get(stack, "/sim/usage").get("items", {})
        cost = 0.0
        for model, m in stats["models"].items():
            price = prices.get(model)
            if price:
                cost += (m["prompt_tokens"] * price["input_per_million"]
                         + m["completion_tokens"] * price["output_per_million"]) / 1e6
        costs[category] = cost
        for i in indices:
            item, r = items[i], results[i]
            served = usage.get(item["tag"], {})
            tokens = served.get("prompt_tokens", 0) + served.get("completion_tokens", 0)
            if r["ok"] and tokens != r["tokens"]:
                mismatched += 1
                unreported += tokens - r["tokens"]
    return results, sum(costs.values()), mismatched, unreported, costs


def summarize(arm, results, cost, mismatched, unreported, n, items=None, costs=None):
    ok = [r for r in results if r["ok"]]
    correct = [bool(r.get("correct")) for r in results]
    k = sum(correct)
    lo, hi = wilson(k, n)
    latencies = [r["latency"] for r in ok]
    categories = {}
    decisions = {}
    signals = {}
    if items and any(category_of(it) for it in items):
        for it, c in zip(items, correct):
            cell = categories.setdefault(category_of(it), {"n": 0, "correct": 0})
            cell["n"] += 1
            cell["correct"] += c
        for name, cell in categories.items():
            cell["accuracy"] = cell["correct"] / cell["n"]
            cell["ci"] = list(wilson(cell["correct"], cell["n"]))
            cell["cost_per_item"] = (costs or {}).get(name, 0.0) / cell["n"]
    if any(r.get("decision") for r in results):
        for it, r in zip(items or [{}] * len(results), results):
            category = category_of(it) if it else None
            per = decisions.setdefault(category, {})
            d = r.get("decision") or ("(error)" if not r["ok"] else "(none)")
            per[d] = per.get(d, 0) + 1
            fired = signals.setdefault(category, {})
            for name in r.get("signals") or []:
                fired[name] = fired.get(name, 0) + 1
    return {
        "arm": arm.name, "kind": arm.kind, "accuracy": k / n, "ci": [lo, hi],
        "correct": correct, "cost_per_item": cost / n,
        "calls": sum(r.get("calls", 0) for r in ok) / max(len(ok), 1),
        "p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95),
        "errors": n - len(ok), "usage_mismatches": mismatched,
        "unreported_tokens": unreported,
        "abandoned": sum(r.get("abandoned", 0) for r in ok),
        "escalated": [r.get("escalated") for r in results]
        if any(r.get("escalated") is not None for r in results) else [],
        "categories": categories,
        "decisions": decisions,
        "signals": signals,
    }


# --------------------------------------------------------------------------------- a scenario

def single_arms(scenario, rename=None):
    rename = rename or {}
    return [Arm(rename.get(m, m), rename.get(m, m), "single") for m in scenario["sim"]["models"]]


def tune_on_dev(scenario, dev, args, seed):
    """What an operator measures before deploying: each model's accuracy (for Ratings weights)
    and the Confidence threshold, on items the test never uses. A scenario with a router also
    gets every arm measured per category on dev: what its decisions were chosen from."""
    recipes = scenario_recipes(scenario)
    prices = scenario["prices"]
    bank_path = Path(args.work) / f"dev-{seed}.json"
    write_bank(bank_path, dev)
    stack = Stack(plugin_config=plugin_config(scenario, clean(recipes)),
                  sim_config=sim_config(scenario, seed), sim_args=["--items", str(bank_path)],
                  concurrency=2)
    notes = []
    try:
        accuracy = {}
        correct = {}
        call_cost = {}
        dev_rows = []
        for arm in single_arms(scenario):
            results, cost, mismatched, unreported, costs = run_arm(
                stack, arm, dev, prices, args.workers)
            correct[arm.name] = [bool(r.get("correct")) for r in results]
            accuracy[arm.name] = sum(correct[arm.name]) / len(dev)
            call_cost[arm.name] = cost / len(dev)
            dev_rows.append(summarize(arm, results, cost, mismatched, unreported, len(dev),
                                      dev, costs))
        notes.append("dev accuracy: " + ", ".join(f"{m} {a:.3f}" for m, a in accuracy.items()))
        for name, recipe in recipes.items():
            if recipe.get("algorithm") == "ratings" and recipe.get("tune") == "log_odds":
                for member in recipe["members"]:
                    member["accuracy"] = round(min(max(accuracy[member["model"]], 0.01), 0.99), 4)
            if recipe.get("algorithm") == "confidence" and recipe.get("tune") == "threshold":
                weak, strong = recipe["candidates"][0]["model"], recipe["candidates"][-1]["model"]
                arm = Arm(f"eval/{name}", f"eval/{name}", "recipe")
                traced = [ask_traced(stack, arm, it) for it in dev]
                scores = [(t or {}).get("steps", [{}])[0].get("score") for t in traced]
                weak_cost, strong_cost = call_cost[weak], call_cost[strong]
                budget = recipe.get("cost_share_of_strong", 0.5)
                options = []
                for t in [x / 100 for x in range(5, 100)]:
                    acc = cost = 0.0
                    for i, s in enumerate(scores):
                        accept = s is not None and s >= t
                        acc += correct[weak][i] if accept else correct[strong][i]
                        cost += weak_cost + (0 if accept else strong_cost)
                    options.append((t, acc / len(dev), cost / (len(dev) * strong_cost)))
                # The most accurate threshold within the cost budget (measured per-call costs
                # of the dev run), and among equally accurate ones the most cautious (it
                # escalates more, which holds up better on new items); the cheapest one when
                # none fits.
                fitting = [o for o in options if o[2] <= budget]
                best = (max(fitting, key=lambda o: (o[1], o[2])) if fitting
                        else min(options, key=lambda o: o[2]))
                recipe["candidates"][0]["threshold"] = best[0]
                notes.append(f"{name}: threshold {best[0]:.2f} chosen on dev: dev accuracy "
                             f"{best[1]:.3f} ({best[1] / accuracy[strong]:.1%} of {strong}) at "
                             f"{best[2]:.2f} of its cost (budget {budget:.2f})")
    finally:
        stack.close()
    if scenario.get("router"):
        stack = Stack(plugin_config=plugin_config(scenario, clean(recipes)),
                      sim_config=sim_config(scenario, seed),
                      sim_args=["--items", str(bank_path)], concurrency=2)
        try:
            for name in recipes:
                arm = Arm(f"eval/{name}", f"eval/{name}", "recipe")
                results, cost, mismatched, unreported, costs = run_arm(
                    stack, arm, dev, prices, args.workers)
                dev_rows.append(summarize(arm, results, cost, mismatched, unreported, len(dev),
                                          dev, costs))
        finally:
            stack.close()
    return clean(recipes), accuracy, notes, dev_rows


def clean(recipes):
    """The recipes without the harness's tuning hints (which the plugin would refuse)."""
    out = copy.deepcopy(recipes)
    for recipe in out.values():
        recipe.pop("tune", None)
        recipe.pop("target_share_of_strong", None)
        recipe.pop("cost_share_of_strong", None)
    return out


def run_scenario(name, scenario, args, seed, rename=None, price_scale=1.0, arms_filter=None,
                 recipes=None, permute=True):
    n = args.items
    test = make_bank(scenario, n, seed, "t", permute=permute)
    notes = []
    dev_rows = []
    if recipes is None:
        dev = make_bank(scenario, max(200, n // 2), seed + 1, "d", permute=permute)
        recipes, dev_accuracy, notes, dev_rows = tune_on_dev(scenario, dev, args, seed + 1)
    prices = {rename.get(m, m) if rename else m: p for m, p in scenario["prices"].items()}
    prices = {m: {k: v * price_scale for k, v in p.items()} for m, p in prices.items()}
    bank_path = Path(args.work) / f"test-{name}-{seed}.json"
    write_bank(bank_path, test)
    router = None
    if scenario.get("router") and not rename:
        names = set(recipes) | {f"single-{m}" for m in scenario["sim"]["models"]}
        try:
            router = router_config(scenario, names)
        except RouterUnavailable as e:
            if getattr(args, "require_auto", False):
                raise SystemExit(f"{name}: {e}")
            warning = f"auto arm skipped: {e}"
            print(f"  WARNING: {name}: {warning}", flush=True)
            notes.append(warning)
    try:
        stack = Stack(plugin_config=plugin_config(scenario, recipes, price_scale, rename, router),
                      sim_config=sim_config(scenario, seed, rename),
                      sim_args=["--items", str(bank_path)], concurrency=2)
    except AssertionError as e:
        # A plugin build without routers refuses the configuration: measure the rest.
        refusal = next((line.split("looper: ", 2)[-1] for line in str(e).splitlines()
                        if "refusing configuration" in line), None)
        if router is None or refusal is None or getattr(args, "require_auto", False):
            raise
        warning = f"auto arm skipped: the plugin refused the router configuration ({refusal})"
        print(f"  WARNING: {name}: {warning}", flush=True)
        notes.append(warning)
        router = None
        stack = Stack(plugin_config=plugin_config(scenario, recipes, price_scale, rename),
                      sim_config=sim_config(scenario, seed, rename),
                      sim_args=["--items", str(bank_path)], concurrency=2)
    arms = single_arms(scenario, rename) + [
        Arm(f"eval/{r}", f"eval/{r}", "recipe") for r in recipes]
    if router is not None:
        arms.append(Arm(AUTO, AUTO, "recipe"))
    if arms_filter:
        arms = [a for a in arms if a.name in arms_filter]
    rows = []
    singles = {}
    try:
        for arm in arms:
            results, cost, mismatched, unreported, costs = run_arm(
                stack, arm, test, prices, args.workers)
            row = summarize(arm, results, cost, mismatched, unreported, n, test, costs)
            rows.append(row)
            if arm.kind == "single":
                singles[arm.name] = row
            print(f"  {name}: {arm.name:<22} accuracy {row['accuracy']:.3f}", flush=True)
    finally:
        stack.close()
    return {"name": name, "seed": seed, "items": n, "rows": rows, "notes": notes,
            "recipes": recipes, "test": test, "dev_rows": dev_rows,
            "dev_items": max(200, n // 2) if dev_rows else 0}


# ------------------------------------------------------------------------------------ reporting

def with_comparisons(result):
    singles = [r for r in result["rows"] if r["kind"] == "single"]
    if not singles:
        return None
    best = max(singles, key=lambda r: r["accuracy"])
    for r in result["rows"]:
        a, b, p = mcnemar(r["correct"], best["correct"])
        r["vs_best"] = {"delta": r["accuracy"] - best["accuracy"], "wins": a, "losses": b,
                        "p": p}
    return best


def theory_lines(scenario, result):
    test = result["test"]
    models = scenario["sim"]["models"]
    k = scenario.get("options", 4)
    lines = []
    expected = {}
    for m, cfg in models.items():
        if "ability" in cfg:
            a = cfg.get("discrimination", 1.0)
            floor = cfg.get("guess_floor", 0.0)
            skills = cfg.get("topic_skills", {})
            ps = [floor + (1 - floor) * sigmoid(a * (
                cfg["ability"] + skills.get(it["entry"].get("topic"), 0.0)
                - it["entry"]["difficulty"])) for it in test]
            expected[m] = sum(ps) / len(ps)
        elif "accuracy" in cfg:
            expected[m] = cfg["accuracy"]
    if expected:
        lines.append("expected single-model accuracy (item-response model): " + ", ".join(
            f"{m} {p:.3f}" for m, p in expected.items()))
    singles = {r["arm"]: r for r in result["rows"] if r["kind"] == "single"}
    names = list(singles)
    if len(names) >= 3:
        rs = []
        for i in range(len(names)):
            for j in range(i + 1, len(names)):
                x, y = singles[names[i]]["correct"], singles[names[j]]["correct"]
                rs.append(phi(x, y))
        r = sum(rs) / len(rs)
        p = sum(s["accuracy"] for s in singles.values()) / len(singles)
        n = len(names)
        lines.append(f"measured mean pairwise correlation of correctness r = {r:.2f}")
        lines.append(f"majority of {n} i.i.d. voters at p = {p:.3f}: {majority_iid(p, n):.3f}; "
                     f"correlated-voter approximation (r = {r:.2f}): "
                     f"{majority_correlated(p, n, r):.3f}")
        ps = [s["accuracy"] for s in singles.values()]
        lines.append("log-odds weighted vote, independent binary-symmetric voters at "
                     + "/".join(f"{q:.3f}" for q in ps) + f": {weighted_vote_binary(ps):.3f} "
                     f"(plain majority: {majority_heterogeneous(ps):.3f}); "
                     f"{k} options make wrong votes split, so measured votes can do better")
    return lines


def phi(x, y):
    n = len(x)
    a = sum(1 for i in range(n) if x[i] and y[i])
    b = sum(1 for i in range(n) if x[i] and not y[i])
    c = sum(1 for i in range(n) if not x[i] and y[i])
    d = n - a - b - c
    den = math.sqrt((a + b) * (c + d) * (a + c) * (b + d))
    return (a * d - b * c) / den if den else 0.0


def majority_heterogeneous(ps):
    total = 0.0
    n = len(ps)
    for mask in range(1 << n):
        prob = 1.0
        for i, p in enumerate(ps):
            prob *= p if mask >> i & 1 else 1 - p
        right = bin(mask).count("1")
        if right * 2 > n:
            total += prob
    return total


def cascade_lines(scenario, result):
    """The two-stage cascade expression from the simulated conditionals."""
    lines = []
    for name, recipe in result["recipes"].items():
        if recipe.get("algorithm") != "confidence" or len(recipe["candidates"]) != 2:
            continue
        weak, strong = recipe["candidates"][0]["model"], recipe["candidates"][1]["model"]
        rows = {r["arm"]: r for r in result["rows"]}
        if weak not in rows or strong not in rows or f"eval/{name}" not in rows:
            continue
        w, s = rows[weak]["correct"], rows[strong]["correct"]
        row = rows[f"eval/{name}"]
        pw = sum(w) / len(w)
        s_given_w = sum(1 for a, b in zip(w, s) if a and b) / max(sum(w), 1)
        s_given_not_w = sum(1 for a, b in zip(w, s) if not a and b) / max(len(w) - sum(w), 1)
        escalated = [bool(e) for e in row.get("escalated") or []]
        if escalated:
            acc_w = [e for e, c in zip(escalated, w) if c]
            acc_nw = [e for e, c in zip(escalated, w) if not c]
            sigma_a = 1 - sum(acc_w) / max(len(acc_w), 1)
            f = 1 - sum(acc_nw) / max(len(acc_nw), 1)
            predicted = (pw * sigma_a + pw * (1 - sigma_a) * s_given_w
                         + (1 - pw) * (1 - f) * s_given_not_w)
            e = pw * (1 - sigma_a) + (1 - pw) * (1 - f)
            lines.append(
                f"cascade {name}: P(strong right | weak right) = {s_given_w:.3f}, "
                f"P(strong right | weak wrong) = {s_given_not_w:.3f}, accept rate of right "
                f"weak answers {sigma_a:.3f}, of wrong ones {f:.3f}: predicted accuracy "
                f"{predicted:.3f} at escalation {e:.3f}; measured {row['accuracy']:.3f} at "
                f"{sum(escalated) / len(escalated):.3f}")
    return lines


def table(result):
    lines = ["| arm | accuracy | 95% CI | vs best single: Δ, wins/losses, McNemar p | "
             "cost/item | calls/item | p50 ms | p95 ms | usage check |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        vs = r.get("vs_best", {})
        usage = ("ok" if r["usage_mismatches"] == 0 else
                 f"{r['usage_mismatches']} items, {r['unreported_tokens']} tokens in abandoned calls")
        lines.append(
            f"| {r['arm']} | {r['accuracy']:.3f} | {r['ci'][0]:.3f}-{r['ci'][1]:.3f} | "
            f"{vs.get('delta', 0):+.3f}, {vs.get('wins', 0)}/{vs.get('losses', 0)}, "
            f"p={vs.get('p', 1):.3g} | {r['cost_per_item']:.6f} | {r['calls']:.2f} | "
            f"{r['p50']:.0f} | {r['p95']:.0f} | {usage} |")
    return "\n".join(lines)


def category_table(rows, categories):
    """Accuracy and cost per item of every arm, one column pair per category."""
    counts = {c: next((r["categories"][c]["n"] for r in rows if c in r["categories"]), 0)
              for c in categories}
    head = "| arm | " + " | ".join(f"{c} (n={counts[c]}) accuracy | {c} cost/item"
                                   for c in categories) + " |"
    lines = [head, "| --- |" + " --- | --- |" * len(categories)]
    for r in rows:
        cells = []
        for c in categories:
            cell = r["categories"].get(c)
            cells.append(f"{cell['accuracy']:.3f} | {cell['cost_per_item']:.6f}" if cell
                         else "- | -")
        lines.append(f"| {r['arm']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def confusion_table(row, categories, decisions):
    """Category → the router's decision (from `x-looper-decision`), in counts."""
    seen = [d for d in decisions if any(d in row["decisions"].get(c, {}) for c in categories)]
    extra = sorted({d for per in row["decisions"].values() for d in per} - set(decisions))
    columns = seen + extra
    lines = ["| category | " + " | ".join(columns) + " |",
             "| --- |" + " --- |" * len(columns)]
    for c in categories:
        per = row["decisions"].get(c, {})
        lines.append(f"| {c} | " + " | ".join(str(per.get(d, 0)) for d in columns) + " |")
    return "\n".join(lines)


def auto_comparison(result, categories=()):
    """The auto arm against the most accurate fixed arm (every recipe the router can pick runs
    as one, single models included; cost breaks ties), and against a hindsight per-category
    choice of fixed arms on the test items (what a perfect category router would get)."""
    rows = {r["arm"]: r for r in result["rows"]}
    auto = rows.get(AUTO)
    if auto is None:
        return None
    fixed = [r for r in result["rows"] if r["arm"] != AUTO]
    best = max(fixed, key=lambda r: (r["accuracy"], -r["cost_per_item"]))
    a, b, p = mcnemar(auto["correct"], best["correct"])
    out = {"best_fixed": best["arm"], "auto_accuracy": auto["accuracy"],
           "best_fixed_accuracy": best["accuracy"], "delta": auto["accuracy"] - best["accuracy"],
           "wins": a, "losses": b, "p": p, "auto_cost_per_item": auto["cost_per_item"],
           "best_fixed_cost_per_item": best["cost_per_item"],
           "cost_ratio": auto["cost_per_item"] / best["cost_per_item"]
           if best["cost_per_item"] else None}
    if auto["categories"]:
        n = sum(cell["n"] for cell in auto["categories"].values())
        picks, k, cost = {}, 0, 0.0
        order = [c for c in categories if c in auto["categories"]]
        for c in order + [c for c in auto["categories"] if c not in order]:
            r = max((r for r in fixed if c in r["categories"]),
                    key=lambda r: (r["categories"][c]["accuracy"],
                                   -r["categories"][c]["cost_per_item"]))
            cell = r["categories"][c]
            picks[c] = r["arm"]
            k += cell["correct"]
            cost += cell["cost_per_item"] * cell["n"]
        out["hindsight"] = {"picks": picks, "accuracy": k / n, "cost_per_item": cost / n}
    return out


def svg(result):
    rows = result["rows"]
    w, h, pad = 640, 420, 60
    costs = [max(r["cost_per_item"], 1e-9) for r in rows]
    lo_c, hi_c = math.log10(min(costs)), math.log10(max(costs))
    if hi_c - lo_c < 1e-9:
        hi_c = lo_c + 1
    accs = [r["accuracy"] for r in rows]
    lo_a, hi_a = max(0.0, min(accs) - 0.05), min(1.0, max(accs) + 0.05)

    def x(c):
        return pad + (math.log10(max(c, 1e-9)) - lo_c) / (hi_c - lo_c) * (w - 2 * pad)

    def y(a):
        return h - pad - (a - lo_a) / max(hi_a - lo_a, 1e-9) * (h - 2 * pad)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" '
             f'font-family="sans-serif" font-size="11">',
             f'<rect width="{w}" height="{h}" fill="white"/>',
             f'<text x="{w / 2}" y="20" text-anchor="middle" font-size="14">{result["name"]}: '
             f'accuracy against cost per item ({result["items"]} items)</text>',
             f'<line x1="{pad}" y1="{h - pad}" x2="{w - pad}" y2="{h - pad}" stroke="black"/>',
             f'<line x1="{pad}" y1="{pad}" x2="{pad}" y2="{h - pad}" stroke="black"/>',
             f'<text x="{w / 2}" y="{h - 15}" text-anchor="middle">cost per item (log scale)</text>',
             f'<text x="15" y="{h / 2}" transform="rotate(-90 15 {h / 2})" '
             f'text-anchor="middle">accuracy</text>']
    for t in range(6):
        a = lo_a + (hi_a - lo_a) * t / 5
        parts.append(f'<text x="{pad - 5}" y="{y(a) + 4}" text-anchor="end">{a:.2f}</text>')
    for r in rows:
        colour = ("#1f77b4" if r["kind"] == "single" else
                  "#2ca02c" if r["arm"] == AUTO else "#d62728")
        cx, cy = x(r["cost_per_item"]), y(r["accuracy"])
        parts.append(f'<line x1="{cx}" y1="{y(r["ci"][0])}" x2="{cx}" y2="{y(r["ci"][1])}" '
                     f'stroke="{colour}" stroke-opacity="0.5"/>')
        parts.append(f'<circle cx="{cx}" cy="{cy}" r="4" fill="{colour}"/>')
        parts.append(f'<text x="{cx + 6}" y="{cy - 6}">{r["arm"]}</text>')
    parts.append("</svg>")
    return "\n".join(parts)


def report(name, scenario, result, command):
    best = with_comparisons(result)
    result["auto"] = auto_comparison(result, list(scenario.get("categories", {})))
    lines = [f"## {name}", "", scenario.get("description", ""), "",
             f"{result['items']} test items, seed {result['seed']}. Command: `{command}`", ""]
    lines += [f"- {n}" for n in result["notes"]]
    lines += ["", table(result), ""]
    if best:
        lines.append(f"Best single model: {best['arm']} ({best['accuracy']:.3f}).")
    lines += [f"- {t}" for t in theory_lines(scenario, result) + cascade_lines(scenario, result)]
    categories = list(scenario.get("categories", {}))
    if categories:
        lines += ["", "Per category on the test items (accuracy, cost per item):", "",
                  category_table(result["rows"], categories)]
    if categories and result.get("dev_rows"):
        lines += ["", f"Per category on the dev split ({result['dev_items']} items, seed "
                  f"{result['seed'] + 1}), which the router's decisions were chosen from:", "",
                  category_table(result["dev_rows"], categories)]
    auto = next((r for r in result["rows"] if r["arm"] == AUTO), None)
    if auto is not None:
        decisions = [d["name"] for d in scenario["router"]["decisions"]]
        routes = ", ".join(f"{d['name']} → {d['recipe']}" for d in scenario["router"]["decisions"])
        lines += ["", f"Auto router decisions ({routes}), category → decision counts:", ""]
        if auto["decisions"]:
            lines.append(confusion_table(auto, categories or [None], decisions))
            counts = {c: sum(auto["decisions"].get(c, {}).values()) for c in categories or [None]}
            lines += ["", "Signals fired (`x-looper-signals`), share of the category's items: " + "; ".join(
                f"{c}: " + (", ".join(f"{s} {k / max(counts[c], 1):.0%}" for s, k in sorted(
                    auto["signals"].get(c, {}).items(), key=lambda x: (-x[1], x[0]))) or "none")
                for c in categories or [None]) + "."]
        else:
            lines.append("(no `x-looper-decision` header in the replies)")
        cmp = result.get("auto")
        if cmp:
            ratio = f"{cmp['cost_ratio']:.2f}" if cmp["cost_ratio"] is not None else "n/a"
            lines += ["", f"auto vs best fixed recipe ({cmp['best_fixed']}): "
                      f"Δaccuracy {cmp['delta']:+.3f} ({cmp['auto_accuracy']:.3f} against "
                      f"{cmp['best_fixed_accuracy']:.3f}), McNemar wins/losses "
                      f"{cmp['wins']}/{cmp['losses']} p={cmp['p']:.3g}, cost ratio {ratio} "
                      f"({cmp['auto_cost_per_item']:.6f} against "
                      f"{cmp['best_fixed_cost_per_item']:.6f} per item)."]
            h = cmp.get("hindsight")
            if h:
                lines.append(
                    "Hindsight per-category choice of fixed arms on these test items ("
                    + ", ".join(f"{c} → {a}" for c, a in h["picks"].items())
                    + f"): accuracy {h['accuracy']:.3f} at {h['cost_per_item']:.6f} per item.")
    return "\n".join(lines) + "\n"


# -------------------------------------------------------------------------------------- controls

def run_controls(args, seed):
    """Checks that hold whatever the patterns do; a failure means the benchmark is broken."""
    out = []
    failures = []
    random_pool = json.loads((SCENARIOS / "control-random.json").read_text())
    k = random_pool.get("options", 4)
    result = run_scenario("control-random", random_pool, args, seed + 100)
    for r in result["rows"]:
        lo, hi = r["ci"]
        ok = lo <= 1 / k <= hi
        out.append(f"all-random pool, {r['arm']}: {r['accuracy']:.3f} ({lo:.3f}-{hi:.3f}) "
                   f"{'contains' if ok else 'MISSES'} 1/K = {1 / k:.3f}")
        if not ok:
            failures.append(out[-1])

    clones = json.loads((SCENARIOS / "control-clones.json").read_text())
    result = run_scenario("control-clones", clones, args, seed + 200)
    single = next(r for r in result["rows"] if r["kind"] == "single")
    for r in result["rows"]:
        if r["kind"] == "single":
            continue
        _, _, p = mcnemar(r["correct"], single["correct"])
        ok = r["accuracy"] <= single["accuracy"] or p > 0.05
        out.append(f"clones of one deterministic model, {r['arm']}: {r['accuracy']:.3f} against "
                   f"the model's {single['accuracy']:.3f} (McNemar p = {p:.3g}) "
                   f"{'cannot beat it' if ok else 'BEATS IT'}")
        if not ok:
            failures.append(out[-1])

    hetero = json.loads((SCENARIOS / "heterogeneous.json").read_text())
    base = run_scenario("control-price", hetero, args, seed + 300)
    scaled = run_scenario("control-price-x3", hetero, args, seed + 300, price_scale=3.0,
                          recipes=base["recipes"], arms_filter=["eval/remom", "eval/ratings"])
    for r in scaled["rows"]:
        b = next(x for x in base["rows"] if x["arm"] == r["arm"])
        ratio = r["cost_per_item"] / b["cost_per_item"] if b["cost_per_item"] else 0
        ok = abs(ratio - 3.0) < 0.03
        out.append(f"prices x3, {r['arm']}: cost x{ratio:.3f} {'ok' if ok else 'WRONG'}")
        if not ok:
            failures.append(out[-1])

    rename = {m: f"renamed-{i}" for i, m in enumerate(hetero["sim"]["models"])}
    renamed = run_scenario("control-rename", hetero, args, seed + 400, rename=rename,
                           recipes=base["recipes"], permute=True)
    for r in renamed["rows"]:
        original = {v: k for k, v in rename.items()}.get(r["arm"], r["arm"])
        b = next((x for x in base["rows"] if x["arm"] == original), None)
        if b is None:
            continue
        lo, hi = b["ci"]
        margin = 0.5 * (hi - lo)
        ok = abs(r["accuracy"] - b["accuracy"]) <= 2 * margin
        out.append(f"renamed models, other seed and option order, {r['arm']} ({original}): "
                   f"{r['accuracy']:.3f} against {b['accuracy']:.3f} "
                   f"{'within the intervals' if ok else 'DIFFERS'}")
        if not ok:
            failures.append(out[-1])
    return out, failures


# ------------------------------------------------------------------------------------------ main

def main():
    parser = argparse.ArgumentParser(description="Looper quality benchmark")
    parser.add_argument("--items", type=int, default=200,
                        help="test items per cell (the acceptance runs use 2000)")
    parser.add_argument("--seed", type=int, default=None,
                        help="item bank seed (default: a fresh one from the clock)")
    parser.add_argument("--scenarios", default="frontier,heterogeneous,cascade,mixed")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--no-controls", action="store_true")
    parser.add_argument("--require-auto", action="store_true",
                        help="fail instead of skipping the auto arm when there is no router")
    parser.add_argument("--work", default=str(ROOT / ".run" / "eval"))
    parser.add_argument("--out", default=str(RESULTS))
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else int(time.time()) % 1_000_000
    Path(args.work).mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = f"make eval EVAL_ARGS='--items {args.items} --seed {seed}'"
    started = time.monotonic()

    sections = [f"# Quality benchmark\n\nSeed {seed}, {args.items} test items per cell. "
                f"Produced by `{command}`.\n"]
    summary = {}
    extra = {}
    for name in [s for s in args.scenarios.split(",") if s]:
        scenario = json.loads((SCENARIOS / f"{name}.json").read_text())
        print(f"scenario {name}", flush=True)
        result = run_scenario(name, scenario, args, seed)
        text = report(name, scenario, result, command)
        print(text, flush=True)
        sections.append(text)
        (out / f"{name}.svg").write_text(svg(result))
        summary[name] = [{k: v for k, v in r.items() if k not in ("correct", "escalated")}
                         for r in result["rows"]]
        if result.get("dev_rows"):
            extra.setdefault("dev", {})[name] = [
                {k: v for k, v in r.items() if k not in ("correct", "escalated")}
                for r in result["dev_rows"]]
        if result.get("auto"):
            extra.setdefault("auto", {})[name] = result["auto"]

    failures = []
    if not args.no_controls:
        print("controls", flush=True)
        lines, failures = run_controls(args, seed)
        text = "## Controls\n\n" + "\n".join(f"- {line}" for line in lines) + "\n"
        print(text, flush=True)
        sections.append(text)

    elapsed = time.monotonic() - started
    sections.append(f"Wall time: {elapsed / 60:.1f} minutes.\n")
    (out / "README.md").write_text("\n".join(sections))
    (out / "results.json").write_text(json.dumps({"seed": seed, "items": args.items,
                                                  "scenarios": summary, **extra}, indent=2))
    print(f"wrote {out}/README.md, results.json and the SVG plots in {elapsed / 60:.1f} min")
    if failures:
        print("CONTROL FAILURES:\n" + "\n".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
