"""The text the tiny model's tokenizer is trained on: our own words, no downloaded corpus.

It covers what the built-in environments and agents say (games, hints, numbers, tool calls,
JSON, short Python), so their messages tokenize into few tokens. The text is generated
deterministically: the same corpus, hence the same tokenizer, on every machine.
"""

from __future__ import annotations

import json
import random

__all__ = ["default_corpus"]

_PROSE = """\
You are a helpful assistant. You play games, call tools and write code to solve tasks.
Answer with the action only. Think step by step, then give the final answer.
I am thinking of an integer from 1 to 16. Guess it in at most 6 turns. After each guess I
will say whether the number is higher or lower. Your guess is too low: the number is higher.
Your guess is too high: the number is lower. It is between 9 and 12. 3 turns left. 1 turn left.
Correct! The number was 11. You found it in 4 turns. No turns left. The number was 5.
Invalid guess: expected an integer. Send an integer from 1 to 16.
Reach the target number using the given numbers once each with + - * / and parentheses.
Use the calculator tool to check an expression. The expression is valid. Wrong answer.
Write a Python function that returns the sum of two numbers. Run code with the run_python
tool, then submit the whole solution. The hidden tests passed. Some tests failed.
You are on a frozen lake. Move left, down, right or up to reach the goal without falling
into a hole. The agent is at row 0, column 0. The goal is at the bottom right corner.
Echo: hello world. The episode is over. Reward: 1.0. Done. Error: the action could not be
parsed. Send a JSON object with the fields of the action, for example {"guess": 8}.
<|im_start|>system\n<|im_start|>user\n<|im_start|>assistant\n
The observation, the action, the reward, the state, the environment and the episode.
"""

_CODE = """\
def add(a, b):
    return a + b

def is_even(n):
    return n % 2 == 0

def reverse_string(s):
    return s[::-1]

def factorial(n):
    out = 1
    for k in range(2, n + 1):
        out *= k
    return out

def count_vowels(s):
    return sum(c in 'aeiouAEIOU' for c in s)

for i in range(10):
    if i % 3 == 0 and not i in [1, 2]:
        print(i, len(str(i)), True, False, None)
    elif i > 5:
        break
    else:
        continue
x = [1, 2, 3]; y = {"a": 1}; z = (x, y); print(sorted(x), max(x), min(x))
import math
print(math.sqrt(16), abs(-3), round(2.5))
"""


def default_corpus(*, seed: int = 0, lines: int = 4000) -> list[str]:
    """Deterministic training text for the tiny model's tokenizer.

    >>> default_corpus(lines=10) == default_corpus(lines=10)
    True
    """
    rng = random.Random(seed)
    texts = [_PROSE, _CODE] * 8
    texts += [str(n) for n in range(1001)]
    for _ in range(lines):
        lo = rng.choice([0, 1, 1, 1, 10])
        hi = lo + rng.choice([7, 15, 15, 31, 99])
        guess, turns = rng.randint(lo, hi), rng.randint(0, 9)
        kind = rng.randrange(6)
        if kind == 0:
            texts.append(f"{guess} is too low: the number is higher. It is between {guess + 1} "
                         f"and {hi}. {turns} turns left.")
        elif kind == 1:
            texts.append(f"{guess} is too high: the number is lower. It is between {lo} "
                         f"and {guess - 1}. {turns} turns left.")
        elif kind == 2:
            texts.append(json.dumps({"guess": guess}))
        elif kind == 3:
            call = {"name": rng.choice(["guess", "calculator", "run_python", "submit"]),
                    "arguments": {"expression": f"({guess} + {turns}) * {lo}"}}
            texts.append(f"<tool_call>\n{json.dumps(call)}\n</tool_call>")
        elif kind == 4:
            texts.append(f"Numbers: {[rng.randint(1, 100) for _ in range(4)]}. Target: "
                         f"{rng.randint(1, 999)}.")
        else:
            texts.append(f"I am thinking of an integer from {lo} to {hi}. Guess it in at most "
                         f"{turns + 1} turns.")
    return texts
