#!/usr/bin/env python3
"""Render the golden chat-format cases for tests/test_chat_format.c.

Each case names a template (a folder of ../shared/models holding chat_template.jinja), the
messages, the tools and the template flags; this script renders it and writes
tests/fixtures/chat/cases.json with the exact expected prompt string.

The reference renderer is Hugging Face transformers (render_jinja_template, which is what
apply_chat_template calls). When transformers is not importable the script falls back to plain
jinja2 set up the way transformers sets it up (sandboxed environment, trim_blocks, lstrip_blocks,
loopcontrols, a tojson filter calling json.dumps(ensure_ascii=False)); the file records which
renderer produced it. Regenerate on a machine with transformers:

    python3 tools/make_chat_fixtures.py [--shared ../shared] [--out tests/fixtures/chat/cases.json]

Message fields map to pio_chat_message: role, content (absent = NULL content; a list = content
parts, see pio_chat_parts), reasoning_content, tool_calls (serialised to tool_calls_json), name.
Flags: add_generation_prompt, and only when present enable_thinking, clear_thinking, add_vision_id.
"""

import argparse
import copy
import json
import os
import sys
from datetime import datetime

TEMPLATES = ("qwen3_4b_instruct_2507", "qwen3_coder_30b", "qwen3_vl_2b", "glm_4_7")


# --------------------------------------------------------------------------------------------
# Renderers
# --------------------------------------------------------------------------------------------
def transformers_renderer():
    import transformers
    from transformers.utils import chat_template_utils as ctu

    if hasattr(ctu, "render_jinja_template"):
        def render(template, messages, tools, add_generation_prompt, kwargs):
            result = ctu.render_jinja_template(
                conversations=[messages], tools=tools, chat_template=template,
                add_generation_prompt=add_generation_prompt, **kwargs)
            rendered = result[0] if isinstance(result, tuple) else result
            return rendered[0] if isinstance(rendered, list) else rendered
        return render, "transformers %s render_jinja_template" % transformers.__version__

    compile_template = getattr(ctu, "_compile_jinja_template")

    def render(template, messages, tools, add_generation_prompt, kwargs):
        return compile_template(template).render(
            messages=messages, tools=tools, documents=None,
            add_generation_prompt=add_generation_prompt, **kwargs)
    return render, "transformers %s _compile_jinja_template" % transformers.__version__


def jinja2_renderer():
    import jinja2
    import jinja2.ext
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def strftime_now(fmt):
        return datetime.now().strftime(fmt)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = strftime_now
    compiled = {}

    def render(template, messages, tools, add_generation_prompt, kwargs):
        if template not in compiled:
            compiled[template] = env.from_string(template)
        return compiled[template].render(messages=messages, tools=tools, documents=None,
                                         add_generation_prompt=add_generation_prompt, **kwargs)
    return render, "jinja2 %s (transformers-equivalent setup)" % jinja2.__version__


def pick_renderer(force_jinja2):
    if not force_jinja2:
        try:
            return transformers_renderer()
        except ImportError:
            pass
        except AttributeError as e:
            print("warning: this transformers has no chat_template_utils rendering function (%s); "
                  "using the jinja2 fallback" % e, file=sys.stderr)
    return jinja2_renderer()


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------
def msg(role, content=None, **fields):
    m = {"role": role}
    if content is not None:
        m["content"] = content
    m.update(fields)
    return m


def text(t):
    return {"type": "text", "text": t}


IMAGE = {"type": "image"}
VIDEO = {"type": "video"}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string", "description": "City name, e.g. \"Paris\""},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"],
                         "description": "Temperature unit"},
                "days": {"type": "integer", "description": "Forecast days", "minimum": 1,
                         "maximum": 7, "default": 1},
            },
            "required": ["city"],
        },
    },
}

# Values that test Python's json.dumps / str() / repr(float) rules.
TRICKY_NUMBERS = {"big": 9007199254740993, "neg": -42, "zero_float": 0.0, "neg_zero": -0.0,
                  "tenth": 0.1, "e16": 1e16, "e15": 1e15, "small": 1.5e-07, "ten_thousandth": 0.0001,
                  "exp5": 1e-05, "hundred": 100.0, "precise": 123456789.12345679,
                  "tiny": 5e-324, "huge": 1.7976931348623157e308}
TRICKY_STRINGS = ["it's", "say \"hi\"", "both ' and \"", "tab\tnew\nline\rcr", "back\\slash",
                  "ctrl\u0001\u001f\u007f", "soft\u00adhyphen nbsp\u00a0", "line\u2028sep\u2029par",
                  "naïve café 日本語 😀", "slash / <tag> &amp;", ""]

SEARCH_TOOL = {
    "type": "function",
    "function": {
        "name": "search_files",
        "description": "  Search files in the workspace.\n  Returns matching paths.\n\n",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": " text to look for \n"},
                "limit": {"type": "integer", "minimum": 0, "default": 10},
                "ratio": {"type": "number", "default": 0.5, "exclusiveMaximum": 1e-05,
                          "multipleOf": 1e16},
                "flags": {"type": "array", "items": {"type": "string", "enum": ["a", "b"]},
                          "uniqueItems": True},
                "options": {"type": "object", "properties": {"deep": {"type": "boolean"}},
                            "required": ["deep"], "additionalProperties": False},
                "mode": {"type": ["string", "null"], "enum": ["fast", "slow", None, 3, 2.5, True],
                         "x-custom key": "v", "$comment": "c", "nullable": True},
                "examples": {"type": "string", "description": "naïve café 日本語 😀\u2028 sep",
                             "examples": TRICKY_STRINGS},
                "either": {"anyOf": [{"type": "string"}, {"type": "null"}],
                           "description": None},
                "letters": {"type": "string", "required": "ab"},
                "keys": {"type": "object", "required": {"x": 1, "y": 2}},
                "numbers": {"type": "object", "default": TRICKY_NUMBERS},
                "empty_enum": {"type": "string", "enum": []},
            },
            "required": ["query"],
        },
        "return": {"type": "array", "items": {"type": "string"}},
    },
}
BARE_TOOL = {"name": "ping", "parameters": {"type": "object", "properties": {}},
             "return": "pong text"}
NO_PARAMS_TOOL = {"type": "function", "function": {"name": "noop", "description": "Does nothing.",
                                                   "parameters": {}}}
NUMBERS_TOOL = {"type": "function", "function": {
    "name": "numbers", "description": "Numbers and strings to serialise.",
    "parameters": {"type": "object", "properties": {"n": {"type": "number",
                                                          "default": TRICKY_NUMBERS,
                                                          "examples": TRICKY_STRINGS}}}}}

CALL_ARGS = {"path": "src/main.c", "count": 3, "ratio": 0.25, "big": 1e100, "flag": True,
             "off": False, "nothing": None, "obj": {"k": "v", "n": [1, 2.0, "x"]},
             "list": [1, "two", False, None], "text": "multi\nline\n", "quote": "it's \"q\"",
             "unicode": "日本語 😀 \u2028"}


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------
def common_cases(t):
    """Plain conversations every template must handle."""
    return [
        dict(name=t + "/system_user", template=t,
             messages=[msg("system", "You are a helpful assistant."), msg("user", "Hello!")]),
        dict(name=t + "/user_only_no_generation_prompt", template=t, add_generation_prompt=False,
             messages=[msg("user", "Hi there")]),
        dict(name=t + "/multi_turn", template=t,
             messages=[msg("system", "Be brief."), msg("user", "What is 2+2?"),
                       msg("assistant", "4"), msg("user", "And 3+3?"),
                       msg("assistant", "6"), msg("user", "Thanks. Now 10*10?")]),
        dict(name=t + "/multi_turn_no_system", template=t,
             messages=[msg("user", "Name a colour."), msg("assistant", "Blue."),
                       msg("user", "Another one.")]),
        dict(name=t + "/unicode_and_whitespace", template=t,
             messages=[msg("system", "  Système: 日本語 😀\n"),
                       msg("user", "\n\n  spaced  \t\n"),
                       msg("assistant", "\u3000 answer\u00a0\n"),
                       msg("user", "quote \" backslash \\ <|im_end|> ok")]),
        dict(name=t + "/ends_with_assistant", template=t, add_generation_prompt=False,
             messages=[msg("user", "Say hi."), msg("assistant", "Hi!")]),
    ]


def qwen3_cases():
    t = "qwen3_4b_instruct_2507"
    return common_cases(t) + [
        dict(name=t + "/tools_with_system", template=t, tools=[WEATHER_TOOL, NUMBERS_TOOL],
             messages=[msg("system", "You can use tools."),
                       msg("user", "Weather in Paris?")]),
        dict(name=t + "/tools_no_system", template=t, tools=[WEATHER_TOOL, SEARCH_TOOL, BARE_TOOL],
             messages=[msg("user", "Weather in Paris?")]),
        dict(name=t + "/empty_tools_list", template=t, tools=[],
             messages=[msg("system", "sys"), msg("user", "hi")]),
        dict(name=t + "/tool_round_trip", template=t, tools=[WEATHER_TOOL],
             messages=[msg("user", "Weather in Paris and Rome?"),
                       msg("assistant", "Let me check.", tool_calls=[
                           {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}},
                           {"type": "function", "function": {"name": "get_weather",
                                                             "arguments": {"city": "Rome"}}}]),
                       msg("tool", "{\"temp\": 21}", name="get_weather"),
                       msg("tool", "{\"temp\": 25}", name="get_weather"),
                       msg("assistant", "Paris 21, Rome 25."),
                       msg("user", "Thanks!")]),
        dict(name=t + "/tool_call_without_content", template=t, tools=[WEATHER_TOOL],
             messages=[msg("user", "Weather?"),
                       msg("assistant", tool_calls=[{"name": "get_weather", "arguments": CALL_ARGS}]),
                       msg("tool", "sunny")]),
        dict(name=t + "/tool_call_string_arguments", template=t,
             messages=[msg("user", "Weather?"),
                       msg("assistant", "", tool_calls=[
                           {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}]),
                       msg("tool", "cold")]),
        dict(name=t + "/multi_step_reasoning", template=t, tools=[WEATHER_TOOL],
             messages=[msg("system", "sys"), msg("user", "Plan a trip."),
                       msg("assistant", "", reasoning_content="\nNeed weather.\n",
                           tool_calls=[{"name": "get_weather", "arguments": {"city": "Nice"}}]),
                       msg("tool", "warm"),
                       msg("assistant", "", tool_calls=[{"name": "get_weather",
                                                         "arguments": {"city": "Lyon"}}]),
                       msg("tool", "mild"),
                       msg("assistant", "Go to Nice.", reasoning_content="Nice is warmer.")]),
        dict(name=t + "/reasoning_history", template=t, add_generation_prompt=False,
             messages=[msg("user", "Q1"),
                       msg("assistant", "A1", reasoning_content="R1"),
                       msg("user", "Q2"),
                       msg("assistant", "\n\nA2", reasoning_content="\nR2\n")]),
        dict(name=t + "/inline_think_split", template=t, add_generation_prompt=False,
             messages=[msg("user", "Q"),
                       msg("assistant", "<think>\nfirst\n</think>\n\nmiddle</think>\n\nfinal")]),
        dict(name=t + "/inline_think_before_last_query", template=t,
             messages=[msg("user", "Q1"), msg("assistant", "<think>r</think>answer"),
                       msg("user", "Q2")]),
        dict(name=t + "/tool_response_as_user_text", template=t, add_generation_prompt=False,
             messages=[msg("user", "Real question"),
                       msg("assistant", "calling", reasoning_content="why"),
                       msg("user", "<tool_response>\nresult\n</tool_response>"),
                       msg("assistant", "done", reasoning_content="after")]),
        dict(name=t + "/empty_reasoning_not_last", template=t,
             messages=[msg("user", "Q"), msg("assistant", "A", reasoning_content=""),
                       msg("tool", "r"), msg("assistant", "B")]),
        dict(name=t + "/later_system_and_unknown_role", template=t,
             messages=[msg("user", "Q"), msg("system", "Mid-chat note."),
                       msg("developer", "ignored"), msg("user", "Q2")]),
        dict(name=t + "/missing_content", template=t,
             messages=[msg("user"), msg("assistant"), msg("tool"), msg("user", "after")]),
    ]


def coder_cases():
    t = "qwen3_coder_30b"
    return common_cases(t) + [
        dict(name=t + "/tools_default_system", template=t, tools=[WEATHER_TOOL],
             messages=[msg("user", "Weather in Paris?")]),
        dict(name=t + "/tools_with_system", template=t, tools=[WEATHER_TOOL],
             messages=[msg("system", "You are a coding agent."), msg("user", "Weather?")]),
        dict(name=t + "/rich_tool_definitions", template=t,
             tools=[SEARCH_TOOL, BARE_TOOL, NO_PARAMS_TOOL, NUMBERS_TOOL],
             messages=[msg("user", "Find TODOs.")]),
        dict(name=t + "/tool_round_trip", template=t, tools=[WEATHER_TOOL, SEARCH_TOOL],
             messages=[msg("system", "sys"), msg("user", "Check Paris and search."),
                       msg("assistant", "  I'll check.\n\n", tool_calls=[
                           {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}},
                           {"type": "function", "function": {"name": "search_files",
                                                             "arguments": CALL_ARGS}}]),
                       msg("tool", "sunny"), msg("tool", "3 files"),
                       msg("assistant", "Done."), msg("user", "Thanks")]),
        dict(name=t + "/tool_call_no_content_no_args", template=t, tools=[BARE_TOOL],
             messages=[msg("user", "ping"),
                       msg("assistant", tool_calls=[{"name": "ping"}]),
                       msg("tool", "pong")]),
        dict(name=t + "/tool_first_in_loop", template=t,
             messages=[msg("system", "sys"), msg("tool", "orphan result"), msg("user", "next")]),
        dict(name=t + "/tool_missing_content_and_last", template=t, add_generation_prompt=False,
             messages=[msg("user", "go"),
                       msg("assistant", "", tool_calls=[{"name": "ping", "arguments": {}}]),
                       msg("tool")]),
        dict(name=t + "/system_without_content", template=t, tools=[BARE_TOOL],
             messages=[msg("system"), msg("user", "hi")]),
        dict(name=t + "/other_role_and_later_system", template=t,
             messages=[msg("user", "Q"), msg("developer", "dev note"), msg("system", "late sys"),
                       msg("assistant", "A", reasoning_content="ignored here")]),
    ]


def vl_cases():
    t = "qwen3_vl_2b"
    return common_cases(t) + [
        dict(name=t + "/images_and_video", template=t,
             messages=[msg("system", [text("You see images."), IMAGE]),
                       msg("user", [text("Compare "), IMAGE, text(" and "), IMAGE, VIDEO]),
                       msg("assistant", "They differ."),
                       msg("user", [IMAGE, text("And this?")])]),
        dict(name=t + "/images_with_vision_id", template=t, add_vision_id=True,
             messages=[msg("user", [IMAGE, IMAGE, text("Which is bigger?"), VIDEO]),
                       msg("assistant", "The first."),
                       msg("user", [VIDEO, IMAGE])]),
        dict(name=t + "/tools_and_image_tool_result", template=t, tools=[WEATHER_TOOL],
             add_vision_id=True,
             messages=[msg("system", [text("sys "), text("text")]),
                       msg("user", [IMAGE, text("Where is this? Weather there?")]),
                       msg("assistant", "Checking.", tool_calls=[
                           {"name": "get_weather", "arguments": {"city": "Rome"}}]),
                       msg("tool", [text("radar: "), IMAGE]),
                       msg("tool", "22C"),
                       msg("assistant", [text("It is warm.")])]),
        dict(name=t + "/tool_call_without_content", template=t, tools=[WEATHER_TOOL],
             messages=[msg("user", "Weather?"),
                       msg("assistant", tool_calls=[{"name": "get_weather", "arguments": CALL_ARGS},
                                                    {"name": "get_weather",
                                                     "arguments": "{\"city\": \"Oslo\"}"}]),
                       msg("tool", "sunny")]),
        dict(name=t + "/system_dropped_later_and_missing_content", template=t,
             messages=[msg("system"), msg("user"), msg("system", "late"),
                       msg("assistant", "<think>kept</think>as is", reasoning_content="ignored"),
                       msg("tool"), msg("user", "end")]),
    ]


def glm_cases():
    t = "glm_4_7"
    return common_cases(t) + [
        dict(name=t + "/thinking_off", template=t, enable_thinking=False,
             messages=[msg("system", "sys"), msg("user", "Hello")]),
        dict(name=t + "/thinking_on", template=t, enable_thinking=True,
             messages=[msg("user", "Hello")]),
        dict(name=t + "/no_messages", template=t, messages=[]),
        dict(name=t + "/no_messages_no_prompt", template=t, add_generation_prompt=False,
             messages=[]),
        dict(name=t + "/reasoning_history", template=t,
             messages=[msg("user", "Q1"),
                       msg("assistant", " A1 ", reasoning_content=" R1 "),
                       msg("user", "Q2"),
                       msg("assistant", "A2", reasoning_content="\n R2 \n"),
                       msg("assistant", "A3", reasoning_content="")]),
        dict(name=t + "/reasoning_history_clear_thinking_false", template=t, clear_thinking=False,
             messages=[msg("user", "Q1"),
                       msg("assistant", "A1", reasoning_content="R1"),
                       msg("user", "Q2")]),
        dict(name=t + "/reasoning_history_clear_thinking_true", template=t, clear_thinking=True,
             messages=[msg("user", "Q1"),
                       msg("assistant", "A1", reasoning_content="R1"),
                       msg("user", "Q2")]),
        dict(name=t + "/inline_think", template=t, add_generation_prompt=False,
             messages=[msg("user", "Q"),
                       msg("assistant", "<think>\n  inner  \n</think>\n\n  visible  "),
                       msg("assistant", "   \n  ")]),
        dict(name=t + "/tools_and_calls", template=t, tools=[WEATHER_TOOL, SEARCH_TOOL],
             messages=[msg("system", "Use tools."), msg("user", "Weather in Paris?"),
                       msg("assistant", "Checking.", reasoning_content="Need a tool.", tool_calls=[
                           {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}},
                           {"type": "function", "function": {"name": "search_files",
                                                             "arguments": CALL_ARGS}},
                           {"name": "get_weather", "arguments": {}}]),
                       msg("tool", "sunny"), msg("tool", "3 files"), msg("tool", "none"),
                       msg("assistant", "It is sunny.")]),
        dict(name=t + "/tool_without_content", template=t, enable_thinking=False,
             messages=[msg("user", "go"),
                       msg("assistant", tool_calls=[{"name": "ping", "arguments": {"a": 1}}]),
                       msg("tool", "first"), msg("tool"), msg("tool", "third")]),
        dict(name=t + "/text_parts_and_unknown_role", template=t,
             messages=[msg("system", [text("sys "), text("parts")]),
                       msg("user", [text("Hello "), text("world")]),
                       msg("developer", "ignored"),
                       msg("assistant", [text("<think>r</think>"), text("answer")]),
                       msg("user", "again")]),
        dict(name=t + "/missing_content", template=t,
             messages=[msg("system"), msg("user"), msg("assistant"), msg("user", "x")]),
        dict(name=t + "/no_user_messages", template=t,
             messages=[msg("system", "sys"), msg("assistant", "A", reasoning_content="R")]),
    ]


def all_cases():
    cases = qwen3_cases() + coder_cases() + vl_cases() + glm_cases()
    names = [c["name"] for c in cases]
    assert len(names) == len(set(names)), "duplicate case names"
    return cases


# --------------------------------------------------------------------------------------------
def render_case(render, templates, case):
    kwargs = {k: case[k] for k in ("enable_thinking", "clear_thinking", "add_vision_id") if k in case}
    agp = case.get("add_generation_prompt", True)
    # Renderers must not see (or keep) our objects: give them a deep copy.
    return render(templates[case["template"]], copy.deepcopy(case["messages"]),
                  copy.deepcopy(case.get("tools")), agp, kwargs)


def main():
    here = os.path.dirname(os.path.abspath(__file__))
    repo = os.path.dirname(here)
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--shared", default=os.path.join(repo, "..", "shared"))
    parser.add_argument("--out", default=os.path.join(repo, "tests", "fixtures", "chat", "cases.json"))
    parser.add_argument("--jinja2", action="store_true", help="use the jinja2 fallback even if "
                        "transformers is importable")
    args = parser.parse_args()

    templates = {}
    for t in TEMPLATES:
        with open(os.path.join(args.shared, "models", t, "chat_template.jinja"), encoding="utf-8") as f:
            templates[t] = f.read()
    render, renderer_name = pick_renderer(args.jinja2)

    out_cases = []
    for case in all_cases():
        entry = {"name": case["name"], "template": case["template"],
                 "messages": case["messages"], "tools": case.get("tools"),
                 "add_generation_prompt": case.get("add_generation_prompt", True)}
        for k in ("enable_thinking", "clear_thinking", "add_vision_id"):
            if k in case:
                entry[k] = case[k]
        entry["expected"] = render_case(render, templates, case)
        out_cases.append(entry)

    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"renderer": renderer_name, "cases": out_cases}, f, ensure_ascii=False, indent=1)
        f.write("\n")
    print("%s: %d cases rendered with %s" % (args.out, len(out_cases), renderer_name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
