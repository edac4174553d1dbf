"""ROLL's IFEval rule worker (GeneralRuleRewardWorker, vroll's ifeval) on real cases: every check ROLL's
ground_truth may name, with a response that passes it and one that fails it; the worker's reading
(after `</think>`, the repetition penalty, tags) and ROLL's file choosing it."""

import json

import pytest

from vroll.config.schema import RewardConfig
from vroll.rewards import ifeval_rule
from vroll.rewards.ifeval_rule import CHECKS, check, ifeval_reward
from vroll.rewards.workers import RewardItem, RewardRouter

# func_name, arguments (as in ROLL's ground_truth), a response that passes, one that fails
CASES = [
    ("verify_keywords", {"keyword_list": ["Paris", "river"]},
     "Paris sits on a RIVER called the Seine.", "Paris is the capital of France."),
    ("verify_keyword_frequency", {"word": "tea", "N": 2},
     "Tea in the morning, tea at night, coffee never.", "Tea in the morning; steeped leaves at night."),
    ("validate_forbidden_words", {"forbidden_words": ["very", "really"]},
     "The view was stunning.", "The view was Very stunning."),
    ("verify_letter_frequency", {"letter": "z", "N": 2}, "Zesty pizza.", "Jazz and pizza."),  # case counts
    ("validate_response_language", {"language": "en"},
     "The weather is lovely today and we are going to the beach with our friends.",
     "Le temps est magnifique aujourd'hui et nous allons à la plage avec nos amis."),
    ("verify_paragraph_count", {"N": 2}, "First part.\n* * *\nSecond part.", "Only one part here."),
    ("validate_word_constraint", {"N": 5, "quantifier": "at most"}, "Short and sweet.",
     "This sentence has rather more than five words in it."),
    ("verify_sentence_constraint", {"N": 3, "quantifier": "at least"}, "One. Two? Three. Four.", "One. Two."),
    ("validate_paragraphs", {"N": 2, "first_word": "Finally", "i": 2},
     "Cats purr.\n\nFinally, dogs bark.", "Cats purr.\n\nDogs bark, finally."),
    ("verify_postscript", {"postscript_marker": "P.S."}, "See you soon.\n\nP.S. Bring snacks.", "See you soon. P.S."),
    ("validate_placeholders", {"N": 2}, "Send it to [name] at [address].", "Send it to [name] at home."),
    ("verify_bullet_points", {"N": 2}, "Shopping:\n* milk\n- eggs", "Shopping:\n* milk\n* eggs\n* bread"),
    ("validate_title", {}, "<<Ode to Rain>>\nDrops fall softly.", "Ode to Rain: drops fall softly."),
    ("validate_choice", {"options": ["My answer is yes.", "My answer is no."]}, "My answer is no.", "Maybe."),
    ("validate_highlighted_sections", {"N": 2}, "This is *key* and *also key*.", "This is *key* only."),
    ("validate_sections", {"N": 2, "section_splitter": "SECTION"},
     "SECTION 1 intro\nSECTION 2 body", "SECTION 1 intro\nSECTION 2 body\nSECTION 3 end"),
    ("validate_json_format", {}, '{"city": "Paris", "population": 2100000}', "city: Paris"),
    ("validate_repeat_prompt", {"original_prompt": "Write a haiku about snow."},
     "Write a haiku about snow. White hush on the hills...", "Here is a haiku about snow."),
    ("validate_two_responses", {}, "Yes, go.\n******\nNo, stay.", "Yes, go.\n******\nYes, go."),
    ("validate_uppercase", {}, "ALL CAPS HERE, 100%!", "ALL CAPS except this"),
    ("validate_lowercase", {}, "all lower case, fine.", "all lower case but Paris."),
    ("validate_frequency_capital_words", {"N": 2, "quantifier": "at least"},
     "Use the API over HTTP.", "Use the API over http."),
    ("validate_end", {"end_phrase": "Is there anything else I can help with?"},
     "Done. Is there anything else I can help with?", "Is there anything else I can help with? Done."),
    ("validate_quotation", {}, '"Wrapped in quotes."', 'Not "wrapped" in quotes.'),
    ("validate_no_commas", {}, "No commas at all here.", "One comma, here."),
]


def test_every_check_roll_names_has_a_case():
    assert sorted(c[0] for c in CASES) == sorted(CHECKS) and len(CHECKS) == 25


@pytest.mark.parametrize("name, args, passing, failing", CASES, ids=[c[0] for c in CASES])
def test_check_passes_and_fails(name, args, passing, failing):
    if name == "validate_response_language":
        pytest.importorskip("langdetect")
    constraint = {"func_name": name, **args}
    assert check(passing, constraint) is True
    assert check(failing, constraint) is False


def test_quantifiers_of_word_and_sentence_counts():
    words = {"func_name": "validate_word_constraint", "N": 10}
    ten = " ".join(["w"] * 10)
    assert check(ten + " w", {**words, "quantifier": "around"})  # within max(round(10 x 0.1), 1) = 1
    assert not check(ten + " w w", {**words, "quantifier": "around"})
    assert check(ten, {**words, "quantifier": "at least"}) and not check("w", {**words, "quantifier": "at least"})
    assert not check(ten, {**words, "quantifier": "exactly"})  # another quantifier fails, as in ROLL
    # abbreviations do not end a sentence
    assert check("Mr. Smith arrived. He sat.", {"func_name": "verify_sentence_constraint", "N": 2,
                                                "quantifier": "around"})
    caps = {"func_name": "validate_frequency_capital_words", "N": 2, "quantifier": "around"}
    assert check("NASA and ESA", caps) and not check("NASA ESA JAXA", caps)  # around: exactly N here


def test_missing_or_bad_arguments_fail_the_check_and_unknown_checks_are_errors():
    assert check("anything", {"func_name": "verify_bullet_points"}) is False  # N missing
    assert check("Pizza", {"func_name": "verify_letter_frequency", "letter": "zz", "N": 2}) is False
    assert check("x", {"func_name": "validate_no_commas", "unused": 1}) is True  # other fields ignored
    with pytest.raises(ValueError, match="func_name 'nope' is not one of ROLL's IFEval checks"):
        check("x", {"func_name": "nope"})


def test_reward_reads_after_thinking_and_adds_the_repetition_penalty():
    truth = json.dumps({"func_name": "validate_lowercase"})
    assert ifeval_reward("<think>Plan It</think>\n\nall lower.<|im_end|>", truth) == 1.0
    assert ifeval_reward("<think>plan</think>\n\nNot lower.", truth) == 0.0
    # the penalty reads the whole response: 4 word 3-grams, 2 distinct -> -0.5 x (1 - 2/4)
    assert ifeval_reward("a b a b a b", truth) == pytest.approx(1.0 - 0.25)
    # ground_truth written with str() by a loader (a Python literal) reads the same
    assert ifeval_reward("all lower.", str({"func_name": "validate_lowercase"})) == 1.0


def test_worker_scores_ifeval_rows_and_counts_others_as_errors():
    router = RewardRouter({"ifeval": RewardConfig(reward_type="ifeval", tag_included=["ifeval", "other"])})
    truth = json.dumps({"func_name": "validate_no_commas"})
    items = [RewardItem("p", "no commas", truth, "ifeval"), RewardItem("p", "a, b", truth, "ifeval"),
             RewardItem("p", "no commas", truth, "other"), RewardItem("p", "fine", None, "ifeval")]
    rewards, correct, metrics = router.score(items)
    assert rewards == [1.0, 0.0, 0.0, 0.0] and correct == [1.0, 0.0, 0.0, 0.0]
    assert metrics["reward/ifeval/errors"] == 2.0


def test_a_missing_langdetect_is_named(monkeypatch):
    import builtins

    real = builtins.__import__

    def no_langdetect(name, *a, **k):
        if name.startswith("langdetect"):
            raise ImportError(name)
        return real(name, *a, **k)

    monkeypatch.setattr(builtins, "__import__", no_langdetect)
    with pytest.raises(ifeval_rule.MissingPackage, match="pip install langdetect"):
        check("Hello there", {"func_name": "validate_response_language", "language": "en"})
