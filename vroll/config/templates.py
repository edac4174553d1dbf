"""Prompt templates, with ROLL's meaning: a template is a name that says how a row's chat `messages`
become the prompt text. A row with tag T uses `tag_to_template[T]`, else `global_template`, else
`actor_train.data_args.template`, else `native` (the model's own chat template); training and
validation rows alike. A row with a plain `prompt` is sent as written (as in ROLL).

The names are ROLL's (`ROLL_TEMPLATES`) and, vroll's addition, the entries of `prompt_templates`: a
ROLL name plus a system prompt and an instruction around each user message, so a user can tell the
model what to do without rewriting the data file. This module is the one place that decides which
template a row gets and whether a template is well-formed; `strategy/prompts.py` renders."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from vroll.config.errors import Issue
from vroll.config.suggest import closest

DEFAULT = "native"
# ROLL's template names -> how vroll renders them (the `render` of `Template`) and what that means
ROLL_TEMPLATES = {
    "native": ("model", "the model's own chat template, with the generation prompt"),
    "qwen2_5": ("model", "as native (ROLL's alias)"),
    "qwen3": ("model_thinking", "the model's chat template with enable_thinking=true"),
    "chatml": ("chatml", "ChatML written out (<|im_start|>role, content, <|im_end|>), whatever the model's template"),
    "empty": ("chatml_single", "one user message in ChatML and the assistant's opening, nothing else"),
    "longcot_V3": ("model_think", "the model's chat template followed by '<think>\\n'"),
}
# ROLL's names whose meaning is ROLL's own instruction text, which vroll does not ship
REFUSED_TEMPLATES = {
    "base": "wraps the question in ROLL's own instruction text (think, then \\boxed{} inside <answer>)",
    "longCOT_qwen2.5": "adds ROLL's own long-thinking system prompt and boxed-answer instruction",
}
PLACEHOLDER = re.compile(r"\{(\w+)\}")
USER_PLACEHOLDERS = ("content",)


@dataclass(frozen=True)
class Template:
    """A resolved template: how the messages are rendered, and what is added to them first."""

    name: str
    render: str  # model, model_thinking, chatml, chatml_single, model_think (see ROLL_TEMPLATES)
    system: str | None = None  # a system message put first, unless the row has one (ROLL's default system)
    user: str | None = None  # each user message's content becomes this, {content} replaced by it

    def same_rendering(self, other: "Template") -> bool:
        return (self.render, self.system, self.user) == (other.render, other.system, other.user)


@dataclass(frozen=True)
class TemplateChoice:
    """Which template each row gets: by its tag, else the default; `source` names the deciding key."""

    default: Template
    source: str
    by_tag: dict[str, Template]

    def for_tag(self, tag: str | None) -> Template:
        return self.by_tag.get(tag, self.default) if tag is not None else self.default

    def key_for(self, tag: str | None) -> str:
        return f"tag_to_template.{tag}" if tag in self.by_tag else self.source


def known_names(custom: dict[str, Any]) -> list[str]:
    return list(ROLL_TEMPLATES) + list(custom)


def resolve(name: str, custom: dict[str, Any], key: str) -> tuple[Template | None, list[Issue]]:
    """The template a name stands for, or the issue naming `key`, the value and the names allowed."""
    if name in custom:
        entry = custom[name]
        base, issues = resolve(entry.template, {}, f"prompt_templates.{name}.template")
        issues += placeholder_issues(f"prompt_templates.{name}", entry.system, entry.user)
        if issues:
            return None, issues
        return Template(name, base.render, entry.system, entry.user), []
    if name in ROLL_TEMPLATES:
        return Template(name, ROLL_TEMPLATES[name][0]), []
    if name in REFUSED_TEMPLATES:
        return None, [Issue(key, f"{name!r} is ROLL's template that {REFUSED_TEMPLATES[name]}, which vroll does not "
                                 "ship: write the wording you want under prompt_templates (system, and user with "
                                 "{content}) and name that entry here")]
    allowed = known_names(custom)
    return None, [Issue(key, f"{name!r} is not a template{closest(name, allowed)}; known: {', '.join(allowed)} "
                             "(ROLL's names, then prompt_templates')")]


def placeholder_issues(key: str, system: str | None, user: str | None) -> list[Issue]:
    """`user` holds {content} (and no other {name}); `system` holds no {name} at all."""
    issues = []
    if system is not None:
        for found in PLACEHOLDER.findall(system):
            issues.append(Issue(f"{key}.system", f"{system!r} has the placeholder {{{found}}}; a system prompt takes "
                                                 "none (placeholders are read in `user` only)"))
    if user is not None:
        names = PLACEHOLDER.findall(user)
        for found in names:
            if found not in USER_PLACEHOLDERS:
                issues.append(Issue(f"{key}.user", f"{user!r} has the unknown placeholder {{{found}}}"
                                                   f"{closest(found, USER_PLACEHOLDERS)}; allowed: "
                                                   + ", ".join(f"{{{p}}}" for p in USER_PLACEHOLDERS)))
        if "content" not in names:
            issues.append(Issue(f"{key}.user", f"{user!r} has no {{content}}: it would replace each user message "
                                               "instead of wrapping it; put {content} where the message goes"))
    return issues


def fill_user(user: str, content: str) -> str:
    """The instruction with the message put in place of {content}."""
    return PLACEHOLDER.sub(lambda m: content if m.group(1) == "content" else m.group(0), user)


def default_source(cfg) -> tuple[str, str]:
    """(name, key) of the template rows get when their tag has none of its own: ROLL's precedence."""
    if cfg.global_template:
        return cfg.global_template, "global_template"
    data = cfg.actor_train.data_args if cfg.actor_train is not None else None
    if data is not None and data.template:
        return data.template, "actor_train.data_args.template"
    return DEFAULT, "default"


def choose_templates(cfg) -> tuple[TemplateChoice | None, list[Issue]]:
    """Every template the file names, resolved: the choice per row, or the issues (all at once)."""
    custom = cfg.prompt_templates
    name, source = default_source(cfg)
    default, issues = resolve(name, custom, source)
    by_tag = {}
    for tag, tag_name in cfg.tag_to_template.items():
        template, found = resolve(tag_name, custom, f"tag_to_template.{tag}")
        issues += found
        by_tag[tag] = template
    for entry in sorted(set(custom) - {name} - set(cfg.tag_to_template.values())):  # defined, named nowhere
        issues += resolve(entry, custom, f"prompt_templates.{entry}")[1]
    issues += validation_template_issues(cfg, default)
    issues = list(dict.fromkeys(issues))  # a template named twice is reported once
    if issues:
        return None, issues
    return TemplateChoice(default, source, by_tag), []


def validation_template_issues(cfg, default: Template | None) -> list[Issue]:
    """Validation rows are formatted like training rows (ROLL's rule): a different template there is
    refused rather than ignored."""
    data = cfg.validation.data_args if cfg.validation is not None else None
    if data is None or not data.template or default is None:
        return []
    own, issues = resolve(data.template, cfg.prompt_templates, "validation.data_args.template")
    if issues or own.same_rendering(default):
        return issues
    return [Issue("validation.data_args.template", f"{data.template!r} differs from the template every row uses "
                                                   f"({default.name!r}, from {default_source(cfg)[1]}): validation rows "
                                                   "are formatted like training rows, as in ROLL; remove it, or use "
                                                   "tag_to_template for rows that need another")]


def template_issues(cfg) -> list[Issue]:
    return choose_templates(cfg)[1]


def unknown_tag_issues(choice: TemplateChoice, tags: set[str | None]) -> list[Issue]:
    """A tag_to_template entry for a tag no row has (a typo would otherwise leave its rows untouched)."""
    present = sorted(t for t in tags if t is not None)
    return [Issue(f"tag_to_template.{tag}", f"no row of the training or validation data has tag {tag!r}"
                                            f"{closest(tag, present)}; tags in the data: {', '.join(present) or 'none'}")
            for tag in choice.by_tag if tag not in tags]
