import pytest

from conftest import GOOD
from facesynth.cli import main
from facesynth.errors import RecipeError
from facesynth.recipe import load_recipe, parse_recipe, shipped_recipes



def test_shipped_recipes_load():
    assert shipped_recipes() == ["agfd", "emotions", "emotions_flux"]
    emotions = load_recipe("emotions")
    assert list(emotions.attributes["emotion"].values) == ["happy", "sad", "angry", "surprised"]
    assert emotions.primary == "emotion" and emotions.balance.cross
    agfd = load_recipe("agfd")
    assert len(agfd.strata) == 62  # 31 table rows x 2 genders
    assert agfd.attributes["feature"].values["open_mouth"].generation.guidance == 15


def test_good_recipe_and_shorthands():
    r = parse_recipe(GOOD, "mini.yaml")
    assert r.attributes["emotion"].values["sad"].phrases == ["frowning"]
    assert r.attributes["gender"].values["male"].phrases == ["male"]  # the name is the phrase
    assert r.settings == {"steps": 10, "guidance": 7.5, "scheduler": "default", "width": 512, "height": 512,
                          "prune_at": None, "keep": None, "cfg_until": None}  # speed-ups are off by default
    assert r.splits == {"train": 0.5, "validation": 0.25, "test": 0.25}


def test_recipe_by_path(tmp_path):
    path = tmp_path / "mini.yaml"
    path.write_text(GOOD)
    assert load_recipe(path).name == "mini"


BAD = [
    ("name: [unclosed", "x.yaml: YAML syntax error: line 1, column 16: expected ',' or ']', but got '<stream end>'"),
    (GOOD + "colour: red\n", "x.yaml: colour: unknown key"),
    (GOOD.replace("  gender:\n    values:\n      male:\n      female: {phrases: [woman], generation: {guidance: 9}}\n",
                  "  gender:\n    values: {}\n"), "x.yaml: attributes.gender.values: must not be empty"),
    (GOOD.replace("      sad: frowning\n", "      sad: frowning\n      happy: [grinning]\n"),
     "x.yaml: line 8: duplicate key 'happy'"),
    (GOOD.replace("{gender}, {emotion}", "{gender}, {mood}"), "x.yaml: template: placeholder '{mood}' names no attribute"),
    (GOOD.replace("splits: {train: 0.5, validation: 0.25, test: 0.25}", "splits: {train: 0.5, holdout: 0.5}"),
     "x.yaml: splits: unknown split 'holdout' (use train, validation, test)"),
    (GOOD.replace("test: 0.25}", "test: 0.5}"), "x.yaml: splits: ratios must sum to 1 (they sum to 1.25)"),
    (GOOD.replace("cross: [emotion, gender]", "strata: [{emotion: happy, gender: male, count: -3}]"),
     "x.yaml: balance.strata.0.count: must be a whole number >= 0"),
    (GOOD.replace("cross: [emotion, gender]", "strata: [{emotion: happy, gender: {male: 2, female: x}}]"),
     "x.yaml: balance.strata.0.gender.female: count must be a whole number >= 0"),
    (GOOD.replace("cross: [emotion, gender]", "strata: [{emotion: glum, count: 2}]"),
     "x.yaml: balance.strata.0.emotion: unknown value 'glum'"),
    (GOOD.replace("cross: [emotion, gender]", "strata: [{emotion: happy, count: 0}]"),
     "x.yaml: balance.strata: counts add up to 0"),
    (GOOD.replace("cross: [emotion, gender]", "cross: [emotion, age]"), "x.yaml: balance.cross.1: 'age' is not an attribute"),
    (GOOD.replace("primary: emotion", "primary: age"), "x.yaml: primary: 'age' is not an attribute (emotion, gender)"),
    (GOOD.replace("generation: {steps: 10}", "generation: {steps: 0}"),
     "x.yaml: generation.steps: Input should be greater than or equal to 1"),
    (GOOD.replace("generation: {steps: 10}", "generation: {scheduler: fast}"),
     "x.yaml: generation.scheduler: unknown scheduler 'fast' "
     "(use default, ddim, pndm, euler, euler_a, dpm++_2m, dpm++_2m_karras, unipc, lcm, tcd, euler_trailing, "
     "ddim_trailing)"),
    (GOOD.replace("generation: {steps: 10}", "generation: {prune_at: 0.3}"),
     "x.yaml: generation: prune_at and keep go together: give both or neither"),
    (GOOD.replace("generation: {steps: 10}", "generation: {prune_at: 1.5, keep: 1}"),
     "x.yaml: generation.prune_at: Input should be less than 1"),
    (GOOD.replace("generation: {steps: 10}", "generation: {cfg_until: .nan}"),
     "x.yaml: generation.cfg_until: must be a finite number (not NaN or infinity)"),
    (GOOD.replace("      happy: [smiling, joyful]", "      Happy!: [smiling]"),
     "x.yaml: attributes.emotion.values: name 'Happy!' must use lowercase letters, digits and '_' only"),
    ("- a\n- b\n", "x.yaml: the recipe must be a YAML mapping of keys to values"),
    (GOOD.replace("name: mini\n", ""), "x.yaml: name: required key is missing"),
    # non-finite numbers, anywhere
    (GOOD.replace("splits: {train: 0.5, validation: 0.25, test: 0.25}", "splits: {train: .nan, validation: 1.0}"),
     "x.yaml: splits.train: must be a finite number (not NaN or infinity)"),
    (GOOD.replace("splits: {train: 0.5, validation: 0.25, test: 0.25}", "splits: {train: .nan}"),
     "x.yaml: splits.train: must be a finite number (not NaN or infinity)"),
    (GOOD.replace("generation: {steps: 10}", "generation: {guidance: .inf}"),
     "x.yaml: generation.guidance: must be a finite number (not NaN or infinity)"),
    (GOOD.replace("{guidance: 9}", "{guidance: -.inf}"),
     "x.yaml: attributes.gender.values.female.generation.guidance: must be a finite number (not NaN or infinity)"),
    # placeholders must be bare names
    (GOOD.replace("{gender}, {emotion}", "{gender:d}, {emotion}"),
     "x.yaml: template: placeholder '{gender:d}' must be a bare attribute name such as '{gender}'"),
    (GOOD.replace("{gender}, {emotion}", "{gender!x}, {emotion}"),
     "x.yaml: template: placeholder '{gender!x}' must be a bare attribute name such as '{gender}'"),
    (GOOD.replace("{gender}, {emotion}", "{gender:{foo}}, {emotion}"),
     "x.yaml: template: placeholder '{gender:{foo}}' must be a bare attribute name such as '{gender}'"),
    (GOOD.replace("{gender}, {emotion}", "{gender:>100000000000}, {emotion}"),
     "x.yaml: template: placeholder '{gender:>100000000000}' must be a bare attribute name such as '{gender}'"),
    (GOOD.replace("{gender}, {emotion}", "{gender.real}, {emotion}"),
     "x.yaml: template: placeholder '{gender.real}' must be a bare attribute name such as '{gender}'"),
    (GOOD.replace("{gender}, {emotion}", "{gender}, {emotion"),
     "x.yaml: template: bad placeholder syntax (expected '}' before end of string); write a literal brace as "
     "'{{' or '}}'"),
    (GOOD.replace('template: "photo of a {gender}, {emotion}"', 'template: "  "'),
     "x.yaml: template: must not be empty"),
    (GOOD.replace("  gender:\n    values:", "  gender:\n    label_prompt: 'a {} {foo}'\n    values:"),
     "x.yaml: attributes.gender.label_prompt: must contain '{}' exactly once, and no other placeholder"),
    (GOOD.replace("  gender:\n    values:", "  gender:\n    label_prompt: 'a {0}'\n    values:"),
     "x.yaml: attributes.gender.label_prompt: must contain '{}' exactly once, and no other placeholder"),
    # strata values and unknown keys
    (GOOD.replace("cross: [emotion, gender]", "strata: [{emotion: happy, gender: [male, female], count: 3}]"),
     "x.yaml: balance.strata.0.gender: must be one value name, or a mapping of value names to counts "
     "(got list ['male', 'female'])"),
    (GOOD.replace("balance:", "balanse:"), "x.yaml: balanse: unknown key (did you mean 'balance'?)"),
    # reserved names
    (GOOD.replace("  gender:", "  seed:").replace("{gender}", "{seed}").replace("emotion, gender]", "emotion, seed]"),
     "x.yaml: attributes: 'seed' is a column every dataset has; name the attribute otherwise"),
    (GOOD.replace("  gender:", "  image:").replace("{gender}", "{image}").replace("emotion, gender]", "emotion, image]"),
     "x.yaml: attributes: 'image' is a column every dataset has; name the attribute otherwise"),
    (GOOD.replace("      sad: frowning", "      default: frowning"),
     "x.yaml: attributes.emotion.values: 'default' is reserved for the dataset's all-rows config; "
     "name the value otherwise"),
    (GOOD.replace("      sad: frowning\n", "      ? [a, b]\n      : frowning\n"),
     "x.yaml: line 7: a list is used as a key; keys are text"),
    (GOOD.replace("      sad: frowning\n", "      1: frowning\n"),
     "x.yaml: line 7: the key 1 is a int, not text; write it in quotes"),
    (GOOD.replace("      sad: frowning\n", "      no: frowning\n"),
     "x.yaml: line 7: the key false is a bool, not text; write it in quotes"),
    (GOOD.replace("description", "x").replace("negative_prompt:", "description: " + "[" * 100 + "]" * 100 +
                                                  "\nnegative_prompt:"),
     "x.yaml: line 13: nested more than 64 levels deep; a recipe needs a few"),
    (GOOD.replace("      sad: frowning", "      sad: !!python/object/apply:os.system [ls]"),
     "x.yaml: YAML syntax error: line 7, column 12: the tag !!python/object/apply:os.system is not plain YAML; a "
     "recipe holds text, numbers, lists and mappings only"),
    (GOOD + "---\nname: two\n", "x.yaml: YAML syntax error: line 18, column 1: a second YAML document ('---'); a "
                                 "recipe is one document"),
    ("x-a: &a [x]\nx-b: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a, *a]\nx-c: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b, "
     "*b]\n" + "x-d: [" + ", ".join(["*c"] * 300) + "]\n",
     "x.yaml: line 4: more than 256 aliases (*name); write the values out"),
]


def test_yaml_merge_keys_merge_and_a_key_written_out_wins():
    text = ("x-gender: &gender\n  values: {male: man, female: woman}\n  description: merged\n"
            + GOOD.replace("  gender:\n    values:\n      male:\n      female: {phrases: [woman], generation: "
                           "{guidance: 9}}\n", "  gender:\n    <<: *gender\n    description: written out\n"))
    recipe = parse_recipe(text, "x.yaml")
    assert list(recipe.attributes["gender"].values) == ["male", "female"]
    assert recipe.attributes["gender"].description == "written out"


@pytest.mark.parametrize("text,message", BAD, ids=[m.split(": ", 1)[1][:40] for _, m in BAD])
def test_bad_recipes_name_file_key_and_problem(text, message, tmp_path, capsys):
    with pytest.raises(RecipeError) as err:
        parse_recipe(text, "x.yaml")
    assert str(err.value) == message
    path = tmp_path / "x.yaml"  # and through the command line: the exact line, exit status 2
    path.write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main.main(args=["plan", str(path), "-n", "4"], prog_name="facesynth")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"Error: {message.replace('x.yaml', str(path), 1)}\n"


def test_unknown_recipe_name():
    with pytest.raises(RecipeError, match="nope: no such recipe file, and not a shipped recipe"):
        load_recipe("nope")


def test_fingerprint_changes_with_content():
    a = parse_recipe(GOOD)
    b = parse_recipe(GOOD.replace("steps: 10", "steps: 11"))
    assert a.fingerprint() == parse_recipe(GOOD).fingerprint()
    assert a.fingerprint() != b.fingerprint()


def test_reserved_attribute_names_cover_every_built_in_column():
    from facesynth.recipe import RESERVED_ATTRIBUTES
    from facesynth.folder.schema import features

    recipe = parse_recipe(GOOD)
    built_in = set(features(recipe)) - set(recipe.attributes)
    assert built_in <= RESERVED_ATTRIBUTES


def test_a_non_primary_value_may_be_called_default():
    recipe = parse_recipe(GOOD.replace("      male:\n", "      default:\n"))
    assert "default" in recipe.attributes["gender"].values


def test_a_key_holding_a_newline_is_still_one_line():
    with pytest.raises(RecipeError) as err:
        parse_recipe(GOOD.replace("  gender:\n    values:", '  "\\n":\n    values:'), "x.yaml")
    assert "\n" not in str(err.value) and str(err.value).startswith("x.yaml: attributes")


@pytest.mark.parametrize("key, value", [("steps", "true"), ("guidance", "false"), ("width", "true")])
def test_booleans_are_not_numbers(tmp_path, key, value):
    from facesynth.errors import RecipeError
    from facesynth.recipe import load_recipe

    path = tmp_path / "b.yaml"
    path.write_text(f"name: b\nprimary: e\nattributes:\n  e:\n    values: {{x: [x]}}\ntemplate: '{{e}}'\n"
                    f"balance: {{cross: [e]}}\ngeneration: {{{key}: {value}}}\n")
    with pytest.raises(RecipeError) as refused:
        load_recipe(str(path))
    assert str(refused.value) == f"{path}: generation.{key}: must be a number, not a boolean ({value})"
