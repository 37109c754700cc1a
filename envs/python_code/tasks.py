"""The python_code task set: small function-writing problems with hidden unit tests.

Written for this project (not taken from any benchmark). Each task names a function, says
what it must do, and carries hidden ``assert`` tests and a reference solution (used by the
tests of this package to prove every task is solvable and every test can fail).

>>> len(TASKS) >= 30
True
>>> TASKS[0].entry_point
'add'
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import datasets

__all__ = ["CodeTask", "TASKS", "make_task_dataset", "task_from_row"]


@dataclasses.dataclass(frozen=True, slots=True)
class CodeTask:
    """One problem: write ``entry_point`` so that every hidden test passes."""

    task_id: str
    entry_point: str
    prompt: str
    tests: tuple[str, ...]
    """Hidden ``assert`` lines, run after the submitted code in the sandbox."""
    solution: str
    """A reference solution (never shown to the agent)."""

    def to_dict(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "entry_point": self.entry_point,
            "prompt": self.prompt,
            "tests": list(self.tests),
            "solution": self.solution,
        }


def _t(task_id: str, entry_point: str, prompt: str, solution: str, *tests: str) -> CodeTask:
    return CodeTask(task_id, entry_point, prompt, tuple(tests), solution.strip() + "\n")


TASKS: tuple[CodeTask, ...] = (
    _t("add", "add", "Write add(a, b) that returns the sum of two integers.",
       "def add(a, b):\n    return a + b",
       "assert add(2, 3) == 5", "assert add(-4, 4) == 0", "assert add(10**12, 1) == 10**12 + 1"),
    _t("is_even", "is_even", "Write is_even(n) that returns True when the integer n is even.",
       "def is_even(n):\n    return n % 2 == 0",
       "assert is_even(4) is True", "assert is_even(7) is False", "assert is_even(0) is True",
       "assert is_even(-3) is False"),
    _t("reverse_string", "reverse_string", "Write reverse_string(s) that returns s reversed.",
       "def reverse_string(s):\n    return s[::-1]",
       "assert reverse_string('abc') == 'cba'", "assert reverse_string('') == ''",
       "assert reverse_string('racecar') == 'racecar'"),
    _t("factorial", "factorial", "Write factorial(n) for n >= 0 (factorial(0) == 1).",
       "def factorial(n):\n    out = 1\n    for k in range(2, n + 1):\n        out *= k\n    return out",
       "assert factorial(0) == 1", "assert factorial(5) == 120", "assert factorial(10) == 3628800"),
    _t("fibonacci", "fibonacci",
       "Write fibonacci(n) returning the n-th Fibonacci number with fibonacci(0) == 0, fibonacci(1) == 1.",
       "def fibonacci(n):\n    a, b = 0, 1\n    for _ in range(n):\n        a, b = b, a + b\n    return a",
       "assert fibonacci(0) == 0", "assert fibonacci(1) == 1", "assert fibonacci(10) == 55",
       "assert fibonacci(80) == 23416728348467685"),
    _t("count_vowels", "count_vowels",
       "Write count_vowels(s) returning how many characters of s are vowels (a, e, i, o, u; any case).",
       "def count_vowels(s):\n    return sum(c in 'aeiouAEIOU' for c in s)",
       "assert count_vowels('hello') == 2", "assert count_vowels('AEIOU xyz') == 5",
       "assert count_vowels('') == 0"),
    _t("is_palindrome", "is_palindrome",
       "Write is_palindrome(s): True when s reads the same backwards, ignoring case and non-letters.",
       "def is_palindrome(s):\n    t = [c.lower() for c in s if c.isalpha()]\n    return t == t[::-1]",
       "assert is_palindrome('A man, a plan, a canal: Panama')", "assert not is_palindrome('hello')",
       "assert is_palindrome('')"),
    _t("max_of_list", "max_of_list",
       "Write max_of_list(xs) returning the largest element of a non-empty list, without using max().",
       "def max_of_list(xs):\n    best = xs[0]\n    for x in xs[1:]:\n        if x > best:\n            best = x\n    return best",
       "assert max_of_list([3, 9, 2]) == 9", "assert max_of_list([-5, -2, -9]) == -2",
       "assert max_of_list([7]) == 7"),
    _t("sum_digits", "sum_digits", "Write sum_digits(n) returning the sum of the decimal digits of |n|.",
       "def sum_digits(n):\n    return sum(int(c) for c in str(abs(n)))",
       "assert sum_digits(1234) == 10", "assert sum_digits(-505) == 10", "assert sum_digits(0) == 0"),
    _t("is_prime", "is_prime", "Write is_prime(n): True when the integer n is a prime number.",
       "def is_prime(n):\n    if n < 2:\n        return False\n    k = 2\n    while k * k <= n:\n        if n % k == 0:\n            return False\n        k += 1\n    return True",
       "assert is_prime(2) and is_prime(13) and is_prime(7919)", "assert not is_prime(1)",
       "assert not is_prime(91)", "assert not is_prime(-7)"),
    _t("gcd", "gcd", "Write gcd(a, b) returning the greatest common divisor of two non-negative integers.",
       "def gcd(a, b):\n    while b:\n        a, b = b, a % b\n    return a",
       "assert gcd(12, 18) == 6", "assert gcd(17, 5) == 1", "assert gcd(0, 9) == 9"),
    _t("flatten", "flatten", "Write flatten(xss) that turns a list of lists into one list, in order.",
       "def flatten(xss):\n    return [x for xs in xss for x in xs]",
       "assert flatten([[1, 2], [3], []]) == [1, 2, 3]", "assert flatten([]) == []"),
    _t("unique_sorted", "unique_sorted",
       "Write unique_sorted(xs) returning the distinct elements of xs in ascending order.",
       "def unique_sorted(xs):\n    return sorted(set(xs))",
       "assert unique_sorted([3, 1, 3, 2, 1]) == [1, 2, 3]", "assert unique_sorted([]) == []"),
    _t("word_count", "word_count",
       "Write word_count(text) returning a dict mapping each whitespace-separated word to its count.",
       "def word_count(text):\n    out = {}\n    for w in text.split():\n        out[w] = out.get(w, 0) + 1\n    return out",
       "assert word_count('a b a') == {'a': 2, 'b': 1}", "assert word_count('') == {}",
       "assert word_count('x  x\\nx') == {'x': 3}"),
    _t("capitalize_words", "capitalize_words",
       "Write capitalize_words(s) that upper-cases the first letter of every space-separated word "
       "and lower-cases the rest.",
       "def capitalize_words(s):\n    return ' '.join(w[:1].upper() + w[1:].lower() for w in s.split(' '))",
       "assert capitalize_words('hello wORLD') == 'Hello World'", "assert capitalize_words('a') == 'A'"),
    _t("fizzbuzz", "fizzbuzz",
       "Write fizzbuzz(n) returning a list of strings for 1..n: 'Fizz' for multiples of 3, 'Buzz' "
       "for multiples of 5, 'FizzBuzz' for both, else the number.",
       "def fizzbuzz(n):\n    out = []\n    for i in range(1, n + 1):\n        s = ('Fizz' if i % 3 == 0 else '') + ('Buzz' if i % 5 == 0 else '')\n        out.append(s or str(i))\n    return out",
       "assert fizzbuzz(5) == ['1', '2', 'Fizz', '4', 'Buzz']", "assert fizzbuzz(15)[-1] == 'FizzBuzz'",
       "assert fizzbuzz(0) == []"),
    _t("binary_search", "binary_search",
       "Write binary_search(xs, target) returning the index of target in the sorted list xs, or -1.",
       "def binary_search(xs, target):\n    lo, hi = 0, len(xs) - 1\n    while lo <= hi:\n        mid = (lo + hi) // 2\n        if xs[mid] == target:\n            return mid\n        if xs[mid] < target:\n            lo = mid + 1\n        else:\n            hi = mid - 1\n    return -1",
       "assert binary_search([1, 3, 5, 7], 5) == 2", "assert binary_search([1, 3, 5, 7], 4) == -1",
       "assert binary_search([], 1) == -1"),
    _t("running_sum", "running_sum", "Write running_sum(xs) returning the list of prefix sums of xs.",
       "def running_sum(xs):\n    out, total = [], 0\n    for x in xs:\n        total += x\n        out.append(total)\n    return out",
       "assert running_sum([1, 2, 3]) == [1, 3, 6]", "assert running_sum([]) == []"),
    _t("rotate_list", "rotate_list",
       "Write rotate_list(xs, k) rotating xs right by k places (k may exceed len(xs)).",
       "def rotate_list(xs, k):\n    if not xs:\n        return []\n    k %= len(xs)\n    return xs[-k:] + xs[:-k] if k else list(xs)",
       "assert rotate_list([1, 2, 3, 4], 1) == [4, 1, 2, 3]", "assert rotate_list([1, 2, 3], 5) == [2, 3, 1]",
       "assert rotate_list([], 3) == []"),
    _t("anagrams", "are_anagrams",
       "Write are_anagrams(a, b): True when the strings use the same letters, ignoring case and spaces.",
       "def are_anagrams(a, b):\n    norm = lambda s: sorted(s.replace(' ', '').lower())\n    return norm(a) == norm(b)",
       "assert are_anagrams('Listen', 'Silent')", "assert not are_anagrams('abc', 'abd')",
       "assert are_anagrams('a gentleman', 'elegant man')"),
    _t("second_largest", "second_largest",
       "Write second_largest(xs) returning the second largest distinct value, or None if there is none.",
       "def second_largest(xs):\n    vals = sorted(set(xs))\n    return vals[-2] if len(vals) >= 2 else None",
       "assert second_largest([4, 1, 4, 3]) == 3", "assert second_largest([5, 5]) is None",
       "assert second_largest([]) is None"),
    _t("roman", "to_roman", "Write to_roman(n) converting 1 <= n <= 3999 to a Roman numeral string.",
       "def to_roman(n):\n    parts = [(1000, 'M'), (900, 'CM'), (500, 'D'), (400, 'CD'), (100, 'C'), (90, 'XC'),\n             (50, 'L'), (40, 'XL'), (10, 'X'), (9, 'IX'), (5, 'V'), (4, 'IV'), (1, 'I')]\n    out = ''\n    for value, sym in parts:\n        while n >= value:\n            out += sym\n            n -= value\n    return out",
       "assert to_roman(4) == 'IV'", "assert to_roman(1994) == 'MCMXCIV'", "assert to_roman(3999) == 'MMMCMXCIX'"),
    _t("balanced", "is_balanced",
       "Write is_balanced(s): True when the brackets ()[]{} in s are balanced and properly nested.",
       "def is_balanced(s):\n    pairs = {')': '(', ']': '[', '}': '{'}\n    stack = []\n    for c in s:\n        if c in '([{':\n            stack.append(c)\n        elif c in pairs:\n            if not stack or stack.pop() != pairs[c]:\n                return False\n    return not stack",
       "assert is_balanced('([]{})')", "assert not is_balanced('([)]')", "assert not is_balanced('((')",
       "assert is_balanced('a(b)c')"),
    _t("chunk", "chunk", "Write chunk(xs, n) splitting xs into consecutive lists of length n (the last may be shorter).",
       "def chunk(xs, n):\n    return [xs[i:i + n] for i in range(0, len(xs), n)]",
       "assert chunk([1, 2, 3, 4, 5], 2) == [[1, 2], [3, 4], [5]]", "assert chunk([], 3) == []"),
    _t("caesar", "caesar",
       "Write caesar(s, k) shifting each ASCII letter k places through the alphabet (wrapping, keeping "
       "case); other characters stay.",
       "def caesar(s, k):\n    out = []\n    for c in s:\n        if 'a' <= c <= 'z':\n            out.append(chr((ord(c) - 97 + k) % 26 + 97))\n        elif 'A' <= c <= 'Z':\n            out.append(chr((ord(c) - 65 + k) % 26 + 65))\n        else:\n            out.append(c)\n    return ''.join(out)",
       "assert caesar('abc', 1) == 'bcd'", "assert caesar('Zz!', 1) == 'Aa!'", "assert caesar('hi', -1) == 'gh'"),
    _t("matrix_transpose", "transpose", "Write transpose(m) returning the transpose of a rectangular list-of-lists matrix.",
       "def transpose(m):\n    return [list(row) for row in zip(*m)]",
       "assert transpose([[1, 2, 3], [4, 5, 6]]) == [[1, 4], [2, 5], [3, 6]]", "assert transpose([]) == []"),
    _t("merge_sorted", "merge_sorted", "Write merge_sorted(a, b) merging two sorted lists into one sorted list.",
       "def merge_sorted(a, b):\n    i = j = 0\n    out = []\n    while i < len(a) and j < len(b):\n        if a[i] <= b[j]:\n            out.append(a[i]); i += 1\n        else:\n            out.append(b[j]); j += 1\n    return out + a[i:] + b[j:]",
       "assert merge_sorted([1, 4, 6], [2, 3, 7]) == [1, 2, 3, 4, 6, 7]", "assert merge_sorted([], [1]) == [1]"),
    _t("digits_to_int", "digits_to_int", "Write digits_to_int(ds) turning a list of decimal digits into the integer they spell.",
       "def digits_to_int(ds):\n    n = 0\n    for d in ds:\n        n = n * 10 + d\n    return n",
       "assert digits_to_int([1, 2, 3]) == 123", "assert digits_to_int([0]) == 0", "assert digits_to_int([]) == 0"),
    _t("most_common", "most_common_char",
       "Write most_common_char(s) returning the character that occurs most often in a non-empty s; on a "
       "tie, the one that appears first.",
       "def most_common_char(s):\n    best = s[0]\n    for c in s:\n        if s.count(c) > s.count(best):\n            best = c\n    return best",
       "assert most_common_char('abracadabra') == 'a'", "assert most_common_char('xyyx') == 'x'"),
    _t("title_case_check", "count_upper", "Write count_upper(s) returning how many upper-case letters s contains.",
       "def count_upper(s):\n    return sum(c.isupper() for c in s)",
       "assert count_upper('Hello World') == 2", "assert count_upper('abc') == 0"),
    _t("power_set_size", "subsets",
       "Write subsets(xs) returning all subsets of the list xs as lists, in any order.",
       "def subsets(xs):\n    out = [[]]\n    for x in xs:\n        out += [s + [x] for s in out]\n    return out",
       "assert sorted(map(sorted, subsets([1, 2, 3]))) == sorted(map(sorted, [[], [1], [2], [3], [1, 2], [1, 3], [2, 3], [1, 2, 3]]))",
       "assert subsets([]) == [[]]"),
    _t("collatz", "collatz_steps",
       "Write collatz_steps(n) returning how many Collatz steps (n -> n/2 if even, else 3n+1) take n >= 1 to 1.",
       "def collatz_steps(n):\n    steps = 0\n    while n != 1:\n        n = n // 2 if n % 2 == 0 else 3 * n + 1\n        steps += 1\n    return steps",
       "assert collatz_steps(1) == 0", "assert collatz_steps(6) == 8", "assert collatz_steps(27) == 111"),
)


def task_from_row(row: Mapping[str, Any]) -> CodeTask:
    """A task from a dict / ``datasets`` row with the fields of :meth:`CodeTask.to_dict`."""
    missing = [k for k in ("task_id", "entry_point", "prompt", "tests") if k not in row]
    if missing:
        raise ValueError(f"a python_code task needs {missing}; got keys {sorted(row)}")
    return CodeTask(
        str(row["task_id"]), str(row["entry_point"]), str(row["prompt"]),
        tuple(str(t) for t in row["tests"]), str(row.get("solution") or ""),
    )


def make_task_dataset() -> "datasets.Dataset":
    """The task set as a local Hugging Face ``datasets.Dataset`` (needs ``datasets``)."""
    import datasets

    return datasets.Dataset.from_list([task.to_dict() for task in TASKS])
