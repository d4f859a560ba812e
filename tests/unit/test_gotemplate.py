"""Tests for service.chat.gotemplate, the pure-Python Go text/template used for Ollama templates.

The GO_* tables were produced by running Go's own text/template (Go 1.19, with
``Option("missingkey=zero")`` and Ollama's function map) on the same templates and data;
"<no value>" (Go's rendering of a missing map key) was replaced by "" as documented in
service/gotemplate.py.
"""
from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import json

import pytest

from service.chat import gotemplate
from service.chat.gotemplate import TemplateError, parse

GO_RENDERINGS = [
    ('a  {{- .A -}}  b',
     {'A': 'x'},
     'axb'),
    ('a \n {{- /* c */ -}} \n b',
     {},
     'ab'),
    ('a {{/* c */}} b',
     {},
     'a  b'),
    ('a {{-1}} b {{1 -}} c',
     {},
     'a -1 b 1c'),
    ('x\t{{- 1 }} {{ 2 -}}\n\ny',
     {},
     'x1 2y'),
    ('{{ .A.B.C }}',
     {'A': {'B': {'C': 'deep'}}},
     'deep'),
    ('{{ $.A }}{{ with .B }}{{ $.A }}{{ . }}{{ end }}',
     {'A': 'r', 'B': 'b'},
     'rrb'),
    ('{{ $x := 1 }}{{ if true }}{{ $x = 2 }}{{ end }}{{ $x }}',
     {},
     '2'),
    ('{{ $x := 1 }}{{ if true }}{{ $x := 2 }}{{ $x }}{{ end }}{{ $x }}',
     {},
     '21'),
    ('{{ if .A }}a{{ else if .B }}b{{ else }}c{{ end }}',
     {'A': 0, 'B': 'x'},
     'b'),
    ('{{ if .A }}a{{ else if .B }}b{{ else }}c{{ end }}',
     {'A': '', 'B': []},
     'c'),
    ('{{ if .A }}y{{ else }}n{{ end }}{{ if .B }}y{{ else }}n{{ end }}{{ if .C }}y{{ else }}n{{ end }}{{ if .D }}y{{ else }}n{{ end }}',
     {'A': {}, 'B': 0.0, 'C': [0], 'D': False},
     'nnyn'),
    ('{{ range .L }}[{{ . }}]{{ end }}',
     {'L': [1, 'a', 2.5, True]},
     '[1][a][2.5][true]'),
    ('{{ range $i, $x := .L }}{{ $i }}={{ $x }};{{ end }}',
     {'L': ['a', 'b']},
     '0=a;1=b;'),
    ('{{ range .L }}x{{ else }}empty{{ end }}',
     {'L': []},
     'empty'),
    ('{{ range $k, $v := .M }}{{ $k }}={{ $v }};{{ end }}',
     {'M': {'b': 2, 'a': 1, 'c': 3}},
     'a=1;b=2;c=3;'),
    ('{{ range .L }}{{ if eq . 2 }}{{ break }}{{ end }}{{ . }}{{ end }}',
     {'L': [1, 2, 3]},
     '1'),
    ('{{ range .L }}{{ if eq . 2 }}{{ continue }}{{ end }}{{ . }}{{ end }}',
     {'L': [1, 2, 3]},
     '13'),
    ('{{ $n := 0 }}{{ range .L }}{{ $n = . }}{{ end }}{{ $n }}',
     {'L': [1, 2, 3]},
     '3'),
    ('{{ with .A }}{{ . }}{{ else }}none{{ end }}|{{ with .B }}{{ . }}{{ else }}none{{ end }}',
     {'A': 'v', 'B': ''},
     'v|none'),
    ('{{ and 1 0 2 }} {{ and 1 2 }} {{ or 0 "" }} {{ or 0 3 }} {{ not 0 }} {{ not "x" }}',
     {},
     '0 2  3 true false'),
    ('{{ eq 1 2 1 }} {{ eq "a" "b" }} {{ ne 1 2 }} {{ lt 1 2 }} {{ le 2 2 }} {{ gt 1 2 }} {{ ge 2.5 1.5 }} {{ lt "a" "b" }}',
     {},
     'true false true true true false true true'),
    ('{{ eq .Missing "a" }}',
     {},
     'false'),
    ('{{ len .L }} {{ len .S }} {{ len .M }}',
     {'L': [1, 2], 'S': 'héllo', 'M': {'a': 1}},
     '2 6 1'),
    ('{{ index .L 1 }} {{ index .M "a" }} {{ index .S 0 }} {{ index .N 0 1 }}',
     {'L': [1, 2], 'S': 'abc', 'M': {'a': 1}, 'N': [[5, 6]]},
     '2 1 97 6'),
    ('{{ slice .L 1 }} {{ slice .L 0 1 }} {{ slice .S 1 3 }} {{ slice .L }}',
     {'L': [1, 2, 3], 'S': 'abcd'},
     '[2 3] [1] bc [1 2 3]'),
    ('{{ print 1 2 "a" 3 "b" "c" }}|{{ println 1 "a" }}',
     {},
     '1 2a3bc|1 a\n'),
    ('{{ printf "%s-%d-%v-%q-%f-%.2f-%5d|%-5s|%05d|%x|%X|%t|%e|%g" "a" 3 1.5 "q" 2.5 3.14159 42 "ab" 42 255 "hi" true 1234.5678 0.000012 }}',
     {},
     'a-3-1.5-"q"-2.500000-3.14-   42|ab   |00042|ff|6869|true|1.234568e+03|1.2e-05'),
    ('{{ printf "%d %s" "a" 1 }}|{{ printf "%d" }}|{{ printf "%d" 1 2 }}',
     {},
     '%!d(string=a) %!s(int=1)|%!d(MISSING)|1%!(EXTRA int=2)'),
    ('{{ printf "%v %v" .L .M }}',
     {'L': [1, 'a'], 'M': {'b': 1, 'a': [1]}},
     '[1 a] map[a:[1] b:1]'),
    ('{{ printf "%6.2f|%-8.3e|%+d|% d|%#x|%o|%b|%c|%U|%q" 3.14159 1234.5 5 5 255 8 5 65 65 65 }}',
     {},
     "  3.14|1.234e+03|+5| 5|0xff|10|101|A|U+0041|'A'"),
    ('{{ 1e21 }} {{ 1e20 }} {{ 1e-5 }} {{ 0.0001 }} {{ 100000.0 }} {{ 1e6 }} {{ 0.1 }} {{ -2.5 }} {{ 3.0 }}',
     {},
     '1e+21 1e+20 1e-05 0.0001 100000 1e+06 0.1 -2.5 3'),
    ('{{ \'a\' }} {{ 0x1F }} {{ 0o17 }} {{ 017 }} {{ 1_000 }} {{ -5 }} {{ 0b101 }} {{ "\\x41\\u00e9\\t." }}{{ `raw\\n` }}',
     {},
     '97 31 15 15 1000 -5 5 Aé\t.raw\\n'),
    ('{{ html "<a href=\'x\'>&\\"" }} {{ js "a\'b\\"c<d>&=\\n" }} {{ urlquery "a b&c=d/é" }}',
     {},
     '&lt;a href=&#39;x&#39;&gt;&amp;&#34; a\\\'b\\"c\\u003Cd\\u003E\\u0026\\u003D\\u000A a+b%26c%3Dd%2F%C3%A9'),
    ('{{ .A | printf "%s!" }} {{ .A | len | printf "%d" }} {{ "a" | eq "a" }}',
     {'A': 'xyz'},
     'xyz! 3 true'),
    ('{{ (len .L) }} {{ (index .L 0).B }} {{ $last := eq (len (slice $.L 1)) 1 }}{{ $last }}',
     {'L': [{'B': 7}, 2]},
     '2 7 true'),
    ('{{ json .A }}',
     # keys in sorted order: Go sorts a map's keys, gengate keeps insertion order (structs, ordered maps)
     {'A': {'f': 1e-07, 'g': 1e+21, 'h': 123456789.0, 'k': '<b>&', 'n': [1, 2.5, None, True]}},
     '{"f":1e-7,"g":1e+21,"h":123456789,"k":"\\u003cb\\u003e\\u0026","n":[1,2.5,null,true]}'),
    ('{{ json "\\u2028\\x01" }} {{ json nil }} {{ json .L }}',
     {'L': []},
     '"\\u2028\\u0001" null []'),
    ('{{ .A }} {{ .B }} {{ .C }}',
     {'A': [1, [2, 3], {'a': None}], 'B': {'y': 1, 'x': 's'}, 'C': True},
     '[1 [2 3] map[a:<nil>]] map[x:s y:1] true'),
]

GO_PARSE_ERRORS = [
    ('{{ .Foo }', 'template: :1: unexpected "}" in operand'),
    ('{{ if .A }}', 'template: :1: unexpected EOF'),
    ('{{ end }}', 'template: :1: unexpected {{end}}'),
    ('{{ else }}', 'template: :1: unexpected {{else}}'),
    ('{{ foo }}', 'template: :1: function "foo" not defined'),
    ('{{ $x }}', 'template: :1: undefined variable "$x"'),
    ('{{/* unclosed', 'template: :1: unclosed comment'),
    ('{{/* c */ }}', 'template: :1: comment ends before closing delimiter'),
    ('{{ .A', 'template: :1: unclosed action'),
    ('line1\n{{ .A\n\n', 'template: :4: unclosed action started at :2'),
    ('{{ (1 }}', 'template: :1: unclosed left paren'),
    ('{{ 1) }}', 'template: :1: unexpected ")" in command'),
    ('{{ "abc }}', 'template: :1: unterminated quoted string'),
    ('{{ 3x }}', 'template: :1: bad number syntax: "3x"'),
    ('{{ @ }}', 'template: :1: unexpected "@" in command'),
    ('{{ }}', 'template: :1: missing value for command'),
    ('{{ 1 | 2 }}', 'template: :1: non executable command in pipeline stage 2'),
    ('{{ break }}', 'template: :1: {{break}} outside {{range}}'),
    ('{{ range .L }}{{ else }}{{ break }}{{ end }}', 'template: :1: {{break}} outside {{range}}'),
    ('{{ if 1 }}{{ else }}{{ else }}{{ end }}', 'template: :1: expected end; found {{else}}'),
    ('{{ "x".A }}', 'template: :1: unexpected . after term "\\"x\\""'),
    ('{{ range $i, $x, $y := .L }}{{ end }}', 'template: :1: too many declarations in range'),
    ('{{ 99999999999999999999 }}', 'template: :1: integer overflow: "99999999999999999999"'),
    ('{{ "\\q" }}', 'template: :1: invalid syntax'),
]

GO_EXEC_ERRORS = [
    ('{{ .A.B }}', {'A': 's'},
     'template: :1:5: executing "" at <.A.B>: can\'t evaluate field B in type interface {}'),
    ('x\n  {{ .A.B }}', {},
     'template: :2:7: executing "" at <.A.B>: nil pointer evaluating interface {}.B'),
    ('{{ .A 1 }}', {'A': 1},
     'template: :1:3: executing "" at <.A>: A is not a method but has arguments'),
    ('{{ nil }}', {},
     'template: :1:3: executing "" at <nil>: nil is not a command'),
    ('{{ eq 1 1.0 }}', {},
     'template: :1:3: executing "" at <eq 1 1.0>: error calling eq: incompatible types for comparison'),
    ('{{ eq 1 }}', {},
     'template: :1:3: executing "" at <eq 1>: error calling eq: missing argument for comparison'),
    ('{{ lt true false }}', {},
     'template: :1:3: executing "" at <lt true false>: error calling lt: invalid type for comparison'),
    ('{{ len 3 }}', {},
     'template: :1:3: executing "" at <len 3>: error calling len: len of type int'),
    ('{{ len }}', {},
     'template: :1:3: executing "" at <len>: wrong number of args for len: want 1 got 0'),
    ('{{ not 1 2 }}', {},
     'template: :1:3: executing "" at <not>: wrong number of args for not: want 1 got 2'),
    ('{{ index .L 5 }}', {'L': [1, 2]},
     'template: :1:3: executing "" at <index .L 5>: error calling index: index out of range: 5'),
    ('{{ index .L 2 }}', {'L': [1, 2]},
     'template: :1:3: executing "" at <index .L 2>: error calling index: reflect: slice index out of range'),
    ('{{ slice .L 2 1 }}', {'L': [1, 2, 3]},
     'template: :1:3: executing "" at <slice .L 2 1>: error calling slice: invalid slice index: 2 > 1'),
    ('{{ range .A }}{{ end }}', {'A': 'abc'},
     'template: :1:9: executing "" at <.A>: range can\'t iterate over abc'),
    ('{{ printf 1 }}', {},
     'template: :1:10: executing "" at <1>: expected string; found 1'),
    ('{{ printf .A }}', {'A': 1},
     'template: :1:10: executing "" at <.A>: wrong type for value; expected string; got int'),
    ('{{ currentDate 1 }}', {},
     'template: :1:15: executing "" at <1>: expected string; found 1'),
    ('éé\n  é{{ len 1 }}', {},
     'template: :2:7: executing "" at <len 1>: error calling len: len of type int'),
]



# --------------------------------------------------------------------------- Go-verified tables

@pytest.mark.parametrize(("text", "data", "expected"), GO_RENDERINGS)
def test_renders_like_go(text, data, expected):
    assert parse(text).render(data) == expected


@pytest.mark.parametrize(("text", "message"), GO_PARSE_ERRORS)
def test_parse_errors_like_go(text, message):
    with pytest.raises(TemplateError) as info:
        parse(text)
    assert str(info.value) == message
    assert str(info.value).startswith("template: ")


@pytest.mark.parametrize(("text", "data", "message"), GO_EXEC_ERRORS)
def test_exec_errors_like_go(text, data, message):
    template = parse(text)
    with pytest.raises(TemplateError) as info:
        template.render(data)
    assert str(info.value) == message


# --------------------------------------------------------------------------- Ollama conformance

GENERATE_TEMPLATE = ("{{- if .System }}System: {{ .System }} {{ end }}{{- if .Prompt }}User: {{ .Prompt }} {{ end }}"
                     "{{- if .Response }}Assistant: {{ .Response }} {{ end }}")
SUFFIX_TEMPLATE = "{{- if .Suffix }}<PRE> {{ .Prompt }} <SUF>{{ .Suffix }} <MID>{{- else }}{{ .Prompt }}{{- end }}"

# Ollama library: qwen2.5's Modelfile TEMPLATE.
QWEN25_TEMPLATE = """{{- if .Messages }}
{{- if or .System .Tools }}<|im_start|>system
{{- if .System }}
{{ .System }}
{{- end }}
{{- if .Tools }}

# Tools

You may call one or more functions to assist with the user query.

You are provided with function signatures within <tools></tools> XML tags:
<tools>
{{- range .Tools }}
{"type": "function", "function": {{ .Function }}}
{{- end }}
</tools>

For each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:
<tool_call>
{"name": <function-name>, "arguments": <args-json-object>}
</tool_call>
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}
{{- else }}
{{- if .System }}<|im_start|>system
{{ .System }}<|im_end|>
{{ end }}{{ if .Prompt }}<|im_start|>user
{{ .Prompt }}<|im_end|>
{{ end }}<|im_start|>assistant
{{ end }}{{ .Response }}{{ if .Response }}<|im_end|>{{ end }}"""

# Ollama library: llama3.2's Modelfile TEMPLATE.
LLAMA32_TEMPLATE = """<|start_header_id|>system<|end_header_id|>

Cutting Knowledge Date: December 2023

{{ if .System }}{{ .System }}
{{- end }}
{{- if .Tools }}When you receive a tool call response, use the output to format an answer to the orginal user question.

You are a helpful assistant with tool calling capabilities.
{{- end }}<|eot_id|>
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>
{{- if and $.Tools $last }}

Given the following functions, please respond with a JSON for a function call with its proper arguments that best answers the given prompt.

Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}. Do not use variables.

{{ range $.Tools }}
{{- . }}
{{ end }}
{{ .Content }}<|eot_id|>
{{- else }}

{{ .Content }}<|eot_id|>
{{- end }}{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>
{{- if .ToolCalls }}
{{ range .ToolCalls }}
{"name": "{{ .Function.Name }}", "parameters": {{ .Function.Arguments }}}{{ end }}
{{- else }}

{{ .Content }}
{{- end }}{{ if not $last }}<|eot_id|>{{ end }}
{{- else if eq .Role "tool" }}<|start_header_id|>ipython<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- end }}
{{- end }}"""

CHAT_DATA = {"System": "S", "Response": "", "Tools": None, "Think": False, "IsThinkSet": False,
             "Messages": [{"Role": "system", "Content": "S"}, {"Role": "user", "Content": "hi"}]}


def test_ollama_generate_template():
    template = parse(GENERATE_TEMPLATE)
    data = {"System": "You are a helpful assistant.", "Prompt": "Hello!", "Response": ""}
    assert template.render(data) == "System: You are a helpful assistant. User: Hello! "
    assert template.render({"Prompt": "Hello!"}) == "User: Hello! "  # missing keys are zero values
    assert template.fields() == {"System", "Prompt", "Response"}


def test_ollama_suffix_template():
    template = parse(SUFFIX_TEMPLATE)
    assert template.render({"Prompt": "def add(", "Suffix": "    return c", "Response": ""}) == \
        "<PRE> def add( <SUF>    return c <MID>"
    assert template.render({"Prompt": "def add(", "Response": ""}) == "def add("
    assert template.render({"Prompt": "def add(", "Suffix": ""}) == "def add("
    assert "Suffix" in template.fields()
    assert "Suffix" not in parse(GENERATE_TEMPLATE).fields()


def test_qwen25_chat_template():  # expected output produced by Go's text/template
    assert parse(QWEN25_TEMPLATE).render(CHAT_DATA) == \
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"


def test_llama32_chat_template():  # expected output produced by Go's text/template
    assert parse(LLAMA32_TEMPLATE).render(CHAT_DATA) == (
        "<|start_header_id|>system<|end_header_id|>\n\nCutting Knowledge Date: December 2023\n\n"
        "S<|eot_id|><|start_header_id|>user<|end_header_id|>\n\nhi<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n")


def test_qwen25_legacy_branch_and_multi_turn():
    template = parse(QWEN25_TEMPLATE)
    assert template.render({"System": "S", "Prompt": "p", "Response": ""}) == \
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\np<|im_end|>\n<|im_start|>assistant\n"
    data = {"System": "", "Tools": None, "Messages": [
        {"Role": "user", "Content": "a"}, {"Role": "assistant", "Content": "b", "ToolCalls": None},
        {"Role": "user", "Content": "c"}]}
    assert template.render(data) == ("<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n"
                                     "<|im_start|>user\nc<|im_end|>\n<|im_start|>assistant\n")
    assert {"Messages", "System", "Tools", "Prompt", "Response", "Role", "Content"} <= template.fields()


class Stringer:
    """A Go value with a String() method and a MarshalJSON-like hook."""

    def __init__(self, **fields):
        self.__dict__.update(fields)

    def __str__(self):
        return json.dumps(self.__json__(), separators=(",", ":"))

    def __json__(self):
        return {k.lower(): v for k, v in self.__dict__.items()}


def test_tool_calls_print_through_str_like_go_stringers():
    call = Stringer(Name="get_weather", Arguments=Stringer(City="Paris"))
    data = {"System": "", "Tools": [Stringer(Type="function", Function=Stringer(Name="get_weather"))],
            "Messages": [{"Role": "user", "Content": "w?"},
                         {"Role": "assistant", "Content": "", "ToolCalls": [{"Function": call}]},
                         {"Role": "tool", "Content": "sunny"}]}
    out = parse(QWEN25_TEMPLATE).render(data)
    assert '{"type": "function", "function": {"name":"get_weather"}}' in out
    assert '<tool_call>\n{"name": "get_weather", "arguments": {"city":"Paris"}}\n</tool_call>' in out
    assert out.endswith("<tool_response>\nsunny\n</tool_response><|im_end|>\n<|im_start|>assistant\n")


TOOLS_TEMPLATE = """{{- range .Tools }}def {{ .Function.Name }}(
{{- range $name, $p := .Function.Parameters.Properties }}{{ $name }}: {{ toTypeScriptType $p }}, {{ end }})
{{ end }}
{{- range .Messages }}{{ if eq .Role "system" }}{{ continue }}{{ end }}[{{ .Role }}] {{ .Content }}
{{ end }}{{ json $.Tools }}"""


def test_tools_template_ranges_maps_sorted_and_uses_ollama_funcs():
    tools = [{"type": "function", "Function": {"Name": "f", "Parameters": {"Properties": {
        "z": {"type": "string"}, "a": {"type": ["integer", "null"]}, "m": {"anyOf": [{"type": "array"}, {"type": "object"}]}}}}}]
    data = {"Tools": tools, "Messages": [{"Role": "system", "Content": "S"}, {"Role": "user", "Content": "<hi>"}]}
    out = parse(TOOLS_TEMPLATE).render(data)
    assert out.startswith("def f(a: number | null, m: any[] | Record<string, any>, z: string, )\n[user] <hi>\n")
    assert out.endswith('"z":{"type":"string"},"a":{"type":["integer","null"]},'
                        '"m":{"anyOf":[{"type":"array"},{"type":"object"}]}}}}}]')


# --------------------------------------------------------------------------- Ollama's legacy execution path

def collate(messages):
    collated = []
    for m in messages:
        if collated and collated[-1]["Role"] == m["Role"] and m["Role"] != "tool":
            collated[-1] = {**collated[-1], "Content": collated[-1]["Content"] + "\n\n" + m["Content"]}
        else:
            collated.append(dict(m))
    return collated


def ollama_legacy_execute(text, messages):
    """Ollama's template.Parse + Execute for a template without .Messages (test-side mirror)."""
    template = parse(text)
    names = {f.lower() for f in template.fields()}
    if "messages" not in names and "response" not in names:
        template = parse(text + "{{ .Response }}")
    out, system, prompt, response = [], "", "", ""
    for m in collate(messages):
        if m["Role"] == "system":
            if prompt or response:
                out.append(template.render({"System": system, "Prompt": prompt, "Response": response}))
                system = prompt = response = ""
            system = m["Content"]
        elif m["Role"] == "user":
            if response:
                out.append(template.render({"System": system, "Prompt": prompt, "Response": response}))
                system = prompt = response = ""
            prompt = m["Content"]
        elif m["Role"] == "assistant":
            response = m["Content"]
    out.append(template.cut_after_response().render({"System": system, "Prompt": prompt, "Response": response}))
    return "".join(out)


U1, A1, U2 = ({"Role": "user", "Content": "Hello friend!"}, {"Role": "assistant", "Content": "Hello human!"},
              {"Role": "user", "Content": "What is your name?"})


# Ollama's template_test.go TestExecuteWithMessages cases (legacy templates).
@pytest.mark.parametrize(("text", "messages", "expected"), [
    ("[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] ", [U1, A1, U2],
     "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] "),
    ("[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] {{ .Response }}", [U1, A1, U2],
     "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] "),
    ("[INST] {{ if .System }}{{ .System }}\n\n{{ end }}{{ .Prompt }}[/INST] {{ .Response }}",
     [{"Role": "system", "Content": "You are a helpful assistant!"}, U1, A1, U2],
     "[INST] You are a helpful assistant!\n\nHello friend![/INST] Hello human![INST] What is your name?[/INST] "),
    ("[INST] {{ .Prompt }}[/INST] ", [U1, A1, U2, {"Role": "assistant", "Content": "My name is Ollama and I"}],
     "[INST] Hello friend![/INST] Hello human![INST] What is your name?[/INST] My name is Ollama and I"),
    ("{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}{{ if .Prompt }}<|im_start|>user\n"
     "{{ .Prompt }}<|im_end|>\n{{ end }}<|im_start|>assistant\n{{ .Response }}<|im_end|>\n",
     [{"Role": "system", "Content": "You are a helpful assistant!"}, U1, A1, U2],
     "<|im_start|>system\nYou are a helpful assistant!<|im_end|>\n<|im_start|>user\nHello friend!<|im_end|>\n"
     "<|im_start|>assistant\nHello human!<|im_end|>\n<|im_start|>user\nWhat is your name?<|im_end|>\n"
     "<|im_start|>assistant\n"),
])
def test_ollama_legacy_path_with_cut_after_response(text, messages, expected):
    assert ollama_legacy_execute(text, messages) == expected


def test_cut_after_response_mirrors_ollama_delete_node():
    template = parse("{{ if .Response }}A: {{ .Response }} X{{ end }} tail{{ .Prompt }}")
    cut = template.cut_after_response()
    assert cut.render({"Response": "r", "Prompt": "p"}) == "A: r"
    assert template.render({"Response": "r", "Prompt": "p"}) == "A: r X tailp"  # the original is untouched
    # A pipeline after .Response loses its command, which removes the whole action.
    assert parse("a{{ .Response | printf \"%s!\" }}b").cut_after_response().render({"Response": "r"}) == "a"
    assert parse("{{ .Prompt }}").cut_after_response().render({"Prompt": "p"}) == "p"
    with pytest.raises(TemplateError):
        parse("{{ if .X }}{{ .Response }}{{ else }}e{{ end }}").cut_after_response()


# --------------------------------------------------------------------------- fields()

@pytest.mark.parametrize(("text", "fields"), [  # Ollama's TestParse (less the appended Response)
    ("{{ .Prompt }}", {"Prompt"}),
    ("{{ .System }} {{ .Prompt }} {{ .Response }}", {"System", "Prompt", "Response"}),
    ("{{ with .Tools }}{{ . }}{{ end }} {{ .System }} {{ .Prompt }}", {"Tools", "System", "Prompt"}),
    ("{{ range .Messages }}{{ .Role }} {{ .Content }}{{ end }}", {"Messages", "Role", "Content"}),
    ('{{ range .Messages }}{{ if eq .Role "tool" }}Tool Result: {{ .ToolName }} {{ .Content }}{{ end }}{{ end }}',
     {"Messages", "Role", "ToolName", "Content"}),
    ("{{ if .Think }}{{ .ThinkLevel }}{{ end }}{{ $x := $.Suffix }}{{ (len .Tools) }}", {"Think", "ThinkLevel", "Suffix", "Tools"}),
    ("{{- range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}{{ end }}", {"Messages"}),
    ("no fields {{ 1 }}", set()),
])
def test_fields(text, fields):
    assert parse(text).fields() == fields


# --------------------------------------------------------------------------- values

def test_missing_and_none_are_zero_values():
    template = parse("[{{ .Missing }}][{{ .None }}][{{ if .Missing }}y{{ else }}n{{ end }}]"
                     "[{{ len .None }}][{{ range .None }}x{{ else }}empty{{ end }}][{{ printf \"%v|%s\" .None .None }}]")
    assert template.render({"None": None}) == "[][][n][0][empty][|]"
    assert parse("{{ index .M \"nope\" }}|{{ eq .Missing \"x\" }}").render({"M": {"a": 1}}) == "|false"
    with pytest.raises(TemplateError, match=r"nil pointer evaluating interface \{\}\.B"):
        parse("{{ .A.B }}").render({})


def test_go_truthiness():
    template = parse("{{ if . }}T{{ else }}F{{ end }}")
    for value in (False, 0, 0.0, "", [], {}, None, ()):
        assert template.render(value) == "F", value
    for value in (True, 1, -1, 0.5, "0", [0], {"a": 0}, object()):
        assert template.render(value) == "T", value


def test_printing_values():
    template = parse("{{ .S }}|{{ .I }}|{{ .F }}|{{ .G }}|{{ .B }}|{{ .L }}|{{ .M }}|{{ .N }}")
    data = {"S": "s", "I": -3, "F": 2.0, "G": 1e-7, "B": False, "L": ["a", 1, None], "M": {"b": 1, "a": "x"}, "N": None}
    assert template.render(data) == "s|-3|2|1e-07|false|[a 1 <nil>]|map[a:x b:1]|"


@dataclasses.dataclass
class Message:
    Role: str
    Content: str
    Images: list = dataclasses.field(default_factory=list)

    def Upper(self, suffix=""):
        return self.Content.upper() + suffix

    def __str__(self):
        return f"<{self.Role}>"


def test_objects_are_structs():
    data = {"Messages": [Message("user", "hi")]}
    out = parse('{{ range .Messages }}{{ .Role }}:{{ .Content }}:{{ .Upper }}:{{ .Upper "!" }}:'
                '{{ "?" | .Upper }}:{{ . }}:{{ len .Images }}{{ end }}').render(data)
    assert out == "user:hi:HI:HI!:HI?:<user>:0"
    with pytest.raises(TemplateError, match="can't evaluate field Nope in type Message"):
        parse("{{ range .Messages }}{{ .Nope }}{{ end }}").render(data)
    with pytest.raises(TemplateError, match="Role has arguments but cannot be invoked as function"):
        parse("{{ range .Messages }}{{ .Role 1 }}{{ end }}").render(data)
    assert parse("{{ json . }}").render(Message("user", "hi")) == '{"Role":"user","Content":"hi","Images":[]}'


def test_ordered_dict_ranges_in_insertion_order():
    data = {"D": {"b": 1, "a": 2}, "O": collections.OrderedDict([("b", 1), ("a", 2)])}
    assert parse("{{ range $k, $v := .D }}{{ $k }}{{ end }}|{{ range $k, $v := .O }}{{ $k }}{{ end }}").render(data) == "ab|ba"


def test_range_forms():
    assert parse("{{ range $i, $x := .L }}{{ $i }}{{ $x }}{{ end }}").render({"L": ("a", "b")}) == "0a1b"
    assert parse("{{ range 3 }}{{ . }}{{ end }}|{{ range $i := 2 }}{{ $i }}{{ end }}|{{ range 0 }}{{ else }}none{{ end }}")\
        .render({}) == "012|01|none"  # Go 1.22+ range over int
    assert parse("{{ range .L }}{{ range . }}{{ if eq . 2 }}{{ break }}{{ end }}{{ . }}{{ end }};{{ end }}")\
        .render({"L": [[1, 2, 3], [4, 2]]}) == "1;4;"
    assert parse("{{ $i := 9 }}{{ range $i, $x := .L }}{{ end }}{{ $i }}").render({"L": [1]}) == "9"


def test_else_with():  # Go 1.23+
    template = parse("{{ with .A }}a={{ . }}{{ else with .B }}b={{ . }}{{ else }}none{{ end }}")
    assert template.render({"A": "1", "B": "2"}) == "a=1"
    assert template.render({"B": "2"}) == "b=2"
    assert template.render({}) == "none"


def test_json_function_matches_go_encoding():
    template = parse("{{ json . }}")
    assert template.render({"b": "<&>", "a": [1, 2.5, None, True]}) == '{"b":"\\u003c\\u0026\\u003e","a":[1,2.5,null,true]}'
    assert template.render("\b\f\n\r\t\x01\u2028é\"\\") == '"\\b\\f\\n\\r\\t\\u0001\\u2028é\\"\\\\"'
    assert template.render([1e-7, 1e21, 1e20, 0.1, -0.0, 100.0]) == "[1e-7,1e+21,100000000000000000000,0.1,-0,100]"
    assert template.render(float("nan")) == ""  # Ollama ignores json.Marshal's error


@pytest.mark.parametrize(("prop", "ts"), [
    ({"type": "string"}, "string"), ({"type": "integer"}, "number"), ({"type": "number"}, "number"),
    ({"type": "boolean"}, "boolean"), ({"type": "array", "items": {"type": "string"}}, "any[]"),
    ({"type": "object"}, "Record<string, any>"), ({"type": "null"}, "null"), ({"type": "weird"}, "any"),
    ({"type": ["string", "null"]}, "string | null"), ({"anyOf": [{"type": "string"}, {"type": "integer"}]}, "string | number"),
    ({"Type": "string"}, "string"), ({}, "any"), (None, "any"), ("string", "any"), (3, "any"),
])
def test_to_typescript_type(prop, ts):
    assert parse("{{ toTypeScriptType .P }}").render({"P": prop}) == ts


def test_date_functions():
    before = dt.date.today()
    out = parse('{{ currentDate }}|{{ yesterdayDate }}|{{ currentDate "2006-01-02" }}').render({})
    after = dt.date.today()
    today, yesterday, again = out.split("|")
    assert today == again and today in {before.isoformat(), after.isoformat()}
    assert yesterday == (dt.date.fromisoformat(today) - dt.timedelta(days=1)).isoformat()


# --------------------------------------------------------------------------- errors and API

@pytest.mark.parametrize("text", [
    '{{ define "x" }}x{{ end }}', '{{ template "x" }}', '{{ block "x" . }}x{{ end }}', "{{ if 1 }}{{ template \"x\" }}{{ end }}",
])
def test_unsupported_constructs(text):
    with pytest.raises(TemplateError, match=r"^template: :1: \{\{(define|template|block)\}\} is not supported by gengate$"):
        parse(text)


def test_syntax_errors_start_with_template():
    for text in ["{{", "{{ .A }", "{{ if }}", "{{ range }}{{ end }}", "{{ 1 + 2 }}", "{{ $x := }}", "x\n{{ end }}"]:
        with pytest.raises(TemplateError) as info:
            parse(text)
        assert str(info.value).startswith("template: "), text
    assert str(pytest.raises(TemplateError, parse, "x\n{{ end }}").value) == "template: :2: unexpected {{end}}"


def test_template_is_reusable_and_errors_are_exceptions():
    template = parse("{{ $x := .A }}{{ range .L }}{{ $x = . }}{{ end }}{{ $x }}")
    assert template.render({"A": 1, "L": [2, 3]}) == "3"
    assert template.render({"A": 1, "L": []}) == "1"
    assert issubclass(TemplateError, Exception)
    assert gotemplate.__all__ == ["TemplateError", "Template", "parse"]
