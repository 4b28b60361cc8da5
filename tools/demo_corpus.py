#!/usr/bin/env python3
"""The demo model's corpus: short ChatML dialogues whose right answers are obvious.

Standard library only, deterministic from a seed, shared by tools/train_demo_model.py.
Categories (each question has one short, one-line answer):
  add      "What is 23 plus 45?" -> "68"                 (0..99 + 0..99)
  sub      "What is 68 minus 23?" -> "45"                (0 <= b <= a <= 99)
  units    "How many centimetres are in 3 metres?" -> "300", and back ("... in 300 centimetres?"
           -> "3"); power-of-ten factors only, n in 1..99
  numwords "How do you write 47 in words?" -> "forty-seven", and back -> "47"   (1..99)
  dates    weekdays and months: after/before, k days/months after/before, n-th month
  spelling "Spell cat backwards." -> "tac", letter count, first letter, last letter
  chat     a few canned lines (greetings, who are you, thanks): training only

The held-out set is 200 questions whose underlying facts never occur in training in any
phrasing: the pair of numbers (both orders for addition), the (unit pair, n), the number for
number words, the (day or month, shift) with |shift| >= 2, or the word for spelling (held-out
words are real words never used in training at all).

  python3 tools/demo_corpus.py [--seed 1234] [--show 20]     prints samples and statistics
"""

import argparse
import random

SYSTEM_PROMPTS = [
    "You are a helpful assistant.",
    "You are a small demo model. Answer briefly.",
    "Answer with one short line.",
]

# ---------------------------------------------------------------------------------------------
# Vocabulary of the tasks

DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December"]
ORDINALS = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth",
            "ninth", "tenth", "eleventh", "twelfth"]
MONTH_DAYS = [31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31]

ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
        "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
        "eighteen", "nineteen"]
TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]

# (big singular, big plural, small singular, small plural, factor)
UNITS = [
    ("metre", "metres", "centimetre", "centimetres", 100),
    ("metre", "metres", "millimetre", "millimetres", 1000),
    ("centimetre", "centimetres", "millimetre", "millimetres", 10),
    ("kilometre", "kilometres", "metre", "metres", 1000),
    ("kilogram", "kilograms", "gram", "grams", 1000),
    ("tonne", "tonnes", "kilogram", "kilograms", 1000),
    ("litre", "litres", "millilitre", "millilitres", 1000),
    ("dollar", "dollars", "cent", "cents", 100),
    ("century", "centuries", "year", "years", 100),
    ("decade", "decades", "year", "years", 10),
    ("millennium", "millennia", "year", "years", 1000),
    ("kilowatt", "kilowatts", "watt", "watts", 1000),
]

# Real words for the spelling questions (3..7 letters, lowercase, no duplicates).
WORDS = """
able acid aged also area army away baby back ball band bank base bath bear beat bell belt
best bird blue boat body bone book boot bowl box boy bread brick bride brown brush cake call
calm camp card care cart case cash cat chair chalk cheap cheek chess chest chin city clay
clock cloud coal coat code cold cook cool copy corn cost cow crab crow cup cut dark date
deer desk dish dog door dove drum duck dust eagle earth east egg fact farm fast fish flag
flat flour fly foam fog food foot fork fox frog fruit game gate gift girl glass glove goat
gold golf grape grass green hair hall hand hat heart hill home hook horse house ice idea
iron jam jar jelly joke juice key kid king kite knee knife lake lamp land leaf lemon light
lily lion list lock lunch map mask meat milk mint moon mouse mud nail name neck nest net
night nose note oak ocean oil onion orange owl page paint pan paper park path pear pen
pencil pig pink pipe plant plate pond pool rain rat ring river road rock roof room root rope
rose salt sand seed sheep ship shoe shop silk sink sky snow soap sock sofa song soup star
stone sun swan table tail tea tent tiger toe tool town toy train tree truck tulip van vase
wall wand wave well whale wheel wind wing wolf wood wool word worm yard yarn zebra zoo
apple arrow bacon badge bench berry blade blank bloom board brain brave bunny cabin camel
candy chain cheese cherry cliff coin comet crown daisy dance diary dream drink eleven feast
fence fever field flame floor forest frost ghost giant globe grain grill habit honey hotel
jewel judge kettle ladder laser lemur magic maple marble melon metal motor music noble
novel olive otter panda party peach pearl piano pilot pizza plum pony puppy queen quiet
radio raven robin robot rocket salad scarf shark shell silver skirt smile snake spoon storm
sugar sweet tiger toast tomato tower tulip uncle video violin wagon water whale window
winter yellow yogurt zipper anchor basket bottle bridge button candle carrot castle circle
coffee cookie cotton dinner doctor dragon engine finger flower garden guitar hammer helmet
island jacket jungle kitten lizard mirror monkey needle orbit parrot pepper pillow planet
pocket rabbit ribbon saddle school shadow silver spider summer sunset tablet teapot ticket
tunnel turtle valley velvet walnut wizard yellow banana pepper marker puzzle copper muffin
""".split()
WORDS = list(dict.fromkeys(WORDS))  # drop repeats, keep order

CONSONANTS = "bcdfghjklmnprstvwz"
VOWELS = "aeiou"

CHAT = [
    (["Hello!", "Hello", "Hi!", "Hi there.", "Hey!", "Good morning!"],
     "Hello! Ask me about numbers, units, dates or spelling."),
    (["Who are you?", "What are you?", "What is your name?"],
     "I am a small demo model trained by the Inference-PIO project."),
    (["What can you do?", "How can you help me?", "What do you know?"],
     "I can add and subtract, convert units, name days and months, and spell words."),
    (["Thank you!", "Thanks!", "Thanks a lot.", "Great, thank you."],
     "You're welcome!"),
    (["Goodbye!", "Bye!", "See you later."],
     "Goodbye!"),
    (["How many days are in a week?", "How many days does a week have?"], "7"),
    (["How many months are in a year?", "How many months does a year have?"], "12"),
    (["How many hours are in a day?", "How many hours does a day have?"], "24"),
    (["How many minutes are in an hour?"], "60"),
    (["How many seconds are in a minute?"], "60"),
    (["How many letters are in the alphabet?"], "26"),
]

# ---------------------------------------------------------------------------------------------
# Helpers


def number_words(n):
    if n < 20:
        return ONES[n]
    tens, ones = divmod(n, 10)
    return TENS[tens] if ones == 0 else TENS[tens] + "-" + ONES[ones]


def unit_name(n, singular, plural):
    return singular if n == 1 else plural


def pseudo_word(rng):
    """A pronounceable made-up word of 3..7 letters."""
    out = ""
    target = rng.randint(3, 7)
    while len(out) < target:
        r = rng.random()
        if r < 0.55:
            out += rng.choice(CONSONANTS) + rng.choice(VOWELS)
        elif r < 0.8:
            out += rng.choice(VOWELS) + rng.choice(CONSONANTS)
        else:
            out += rng.choice(CONSONANTS)
    return out[:target]


def ordinal_suffix(i):
    return {1: "st", 2: "nd", 3: "rd"}.get(i if i < 20 else i % 10, "th")


# ---------------------------------------------------------------------------------------------
# Question makers: each returns (key, question, answer); key names the underlying fact.


def q_add(rng, a=None, b=None):
    if a is None:
        a, b = rng.randint(0, 99), rng.randint(0, 99)
    t = rng.choice([
        "What is {a} plus {b}?", "What is {a} + {b}?", "Add {a} and {b}.",
        "Calculate {a} + {b}.", "What is the sum of {a} and {b}?", "{a} + {b} = ?",
        "What do you get when you add {a} and {b}?", "What is {a} added to {b}?",
    ])
    return ("add", min(a, b), max(a, b)), t.format(a=a, b=b), str(a + b)


def q_sub(rng, a=None, b=None):
    if a is None:
        a = rng.randint(0, 99)
        b = rng.randint(0, a)
    t = rng.choice([
        "What is {a} minus {b}?", "What is {a} - {b}?", "Subtract {b} from {a}.",
        "Calculate {a} - {b}.", "What is {a} take away {b}?", "{a} - {b} = ?",
        "What is the difference between {a} and {b}?", "What do you get when you take {b} from {a}?",
    ])
    return ("sub", a, b), t.format(a=a, b=b), str(a - b)


def q_units(rng, pair=None, n=None, down=None):
    if pair is None:
        pair, n, down = rng.randrange(len(UNITS)), rng.randint(1, 99), rng.random() < 0.6
    big1, bigp, small1, smallp, f = UNITS[pair]
    if down:  # big -> small: multiply
        src = "%d %s" % (n, unit_name(n, big1, bigp))
        dst, ans = smallp, str(n * f)
    else:     # small -> big: divide
        src = "%d %s" % (n * f, smallp)
        dst, ans = bigp, str(n)
    t = rng.choice([
        "How many {dst} are in {src}?", "How many {dst} is {src}?", "Convert {src} to {dst}.",
        "{src} is how many {dst}?", "How many {dst} make {src}?", "What is {src} in {dst}?",
    ])
    return ("units", pair, n), t.format(src=src, dst=dst), ans


def q_numwords(rng, n=None, to_words=None):
    if n is None:
        n, to_words = rng.randint(1, 99), rng.random() < 0.55
    w = number_words(n)
    if to_words:
        t = rng.choice(["How do you write {n} in words?", "Write {n} in words.",
                        "What is {n} in words?", "Spell the number {n}."])
        return ("num", n), t.format(n=n), w
    t = rng.choice(["What number is {w}?", "Write {w} as a number.", "What is {w} in digits?",
                    "Write {w} in digits."])
    return ("num", n), t.format(w=w), str(n)


def q_dates_shift(rng, kind=None, i=None, k=None):
    """Day or month shifted by k (k != 0); k = +-1 has its own phrasings."""
    if kind is None:
        kind = "day" if rng.random() < 0.55 else "month"
        span = 10 if kind == "day" else 11
        i = rng.randrange(7 if kind == "day" else 12)
        k = rng.choice([1, 1, 1, -1, -1] + list(range(2, span + 1)) + list(range(-span, -1)))
    names = DAYS if kind == "day" else MONTHS
    x, ans = names[i], names[(i + k) % len(names)]
    if kind == "day":
        if k == 1:
            t = rng.choice(["What day comes after {x}?", "What day is after {x}?",
                            "Which day follows {x}?", "If today is {x}, what day is tomorrow?",
                            "What is the day after {x}?"])
        elif k == -1:
            t = rng.choice(["What day comes before {x}?", "What day is before {x}?",
                            "If today is {x}, what day was yesterday?",
                            "What is the day before {x}?"])
        elif k > 0:
            t = rng.choice(["What day is {k} days after {x}?",
                            "If today is {x}, what day will it be in {k} days?",
                            "What day comes {k} days after {x}?"])
        else:
            t = rng.choice(["What day is {k} days before {x}?",
                            "If today is {x}, what day was it {k} days ago?",
                            "What day was {k} days before {x}?"])
    else:
        if k == 1:
            t = rng.choice(["What month comes after {x}?", "Which month follows {x}?",
                            "What is the month after {x}?"])
        elif k == -1:
            t = rng.choice(["What month comes before {x}?", "What is the month before {x}?",
                            "Which month comes just before {x}?"])
        elif k > 0:
            t = rng.choice(["What month is {k} months after {x}?",
                            "What month comes {k} months after {x}?"])
        else:
            t = rng.choice(["What month is {k} months before {x}?",
                            "What month was {k} months before {x}?"])
    return (kind, i, k), t.format(x=x, k=abs(k)), ans


def q_dates_other(rng):
    r = rng.random()
    i = rng.randrange(12)
    if r < 0.4:
        t = rng.choice(["What is the {o} month of the year?", "Which month is the {o} month?",
                        "Which is month number {n} of the year?"])
        return ("month_ord", i), t.format(o=ORDINALS[i], n=i + 1), MONTHS[i]
    if r < 0.7:
        t = rng.choice(["What number is the month {m}?", "Which month number is {m}?"])
        return ("month_num", i), t.format(m=MONTHS[i]), str(i + 1)
    if r < 0.9:
        ans = "28, or 29 in a leap year" if i == 1 else str(MONTH_DAYS[i])
        t = rng.choice(["How many days are in {m}?", "How many days does {m} have?"])
        return ("month_days", i), t.format(m=MONTHS[i]), ans
    d = rng.randrange(7)
    t = rng.choice(["Is {d} a weekday or a weekend day?", "Is {d} on the weekend?"])
    if "weekend?" in t:
        ans = "Yes" if d >= 5 else "No"
    else:
        ans = "A weekend day" if d >= 5 else "A weekday"
    return ("day_kind", d), t.format(d=DAYS[d]), ans


def q_spelling(rng, word, task=None):
    if task is None:
        task = rng.choice(["reverse", "reverse", "count", "first", "last"])
    if task == "reverse":
        t = rng.choice(["Spell {w} backwards.", "Write {w} backwards.",
                        "What is {w} spelled backwards?", "Reverse the word {w}.",
                        "Spell the word {w} backwards."])
        ans = word[::-1]
    elif task == "count":
        t = rng.choice(["How many letters are in the word {w}?", "How many letters does {w} have?",
                        "How many letters are in {w}?", "Count the letters in {w}."])
        ans = str(len(word))
    elif task == "first":
        t = rng.choice(["What is the first letter of {w}?", "What letter does {w} start with?",
                        "Which letter does the word {w} begin with?"])
        ans = word[0]
    else:
        t = rng.choice(["What is the last letter of {w}?", "What letter does {w} end with?",
                        "Which letter does the word {w} end with?"])
        ans = word[-1]
    return ("word", word), t.format(w=word), ans


def q_chat(rng):
    qs, ans = rng.choice(CHAT)
    q = rng.choice(qs)
    return ("chat", q), q, ans


# ---------------------------------------------------------------------------------------------
# Held-out set and training sampler

HELDOUT_PLAN = [("add", 35), ("sub", 35), ("units", 30), ("numwords", 20), ("dates", 35),
                ("spelling", 45)]
SPELLING_CANDIDATES = 90   # real words reserved (never trained on); the first 45 usable ones are asked


def reserved_words(seed):
    """Real words kept out of training; tools/train_demo_model.py asks the first 45 of these
    whose tokens all occur in training spelling words."""
    rng = random.Random(seed * 7 + 3)
    words = [w for w in WORDS if 3 <= len(w) <= 7]
    rng.shuffle(words)
    return words[:SPELLING_CANDIDATES]


def heldout_questions(seed, spelling_words=None):
    """200 questions (category, key, question, answer), facts disjoint from each other.
    With spelling_words None the spelling part is left out (the other items are the same)."""
    rng = random.Random(seed * 7 + 1)
    items, keys = [], set()

    def take(cat, make, count):
        got = 0
        while got < count:
            key, q, a = make()
            if key in keys:
                continue
            keys.add(key)
            items.append({"category": cat, "key": list(key), "question": q, "answer": a})
            got += 1

    for cat, count in HELDOUT_PLAN:
        if cat == "add":
            take(cat, lambda: q_add(rng), count)
        elif cat == "sub":
            take(cat, lambda: q_sub(rng), count)
        elif cat == "units":
            take(cat, lambda: q_units(rng), count)
        elif cat == "numwords":
            take(cat, lambda: q_numwords(rng), count)
        elif cat == "dates":
            def shifted():
                kind = "day" if rng.random() < 0.5 else "month"
                span = 10 if kind == "day" else 11
                k = rng.choice(list(range(2, span + 1)) + list(range(-span, -1)))
                return q_dates_shift(rng, kind, rng.randrange(7 if kind == "day" else 12), k)
            take(cat, shifted, count)
        elif cat == "spelling" and spelling_words is not None:
            tasks = ["reverse", "count", "first", "last"]
            words = iter(spelling_words)
            take(cat, lambda: q_spelling(rng, next(words), tasks[len(items) % 4]), count)
    return items


class Sampler:
    """Draws training dialogues; never a fact of the held-out set."""

    WEIGHTS = [("add", 0.19), ("sub", 0.17), ("units", 0.14), ("numwords", 0.08),
               ("dates", 0.14), ("spelling", 0.23), ("chat", 0.05)]

    def __init__(self, seed, heldout_keys, excluded_words):
        self.rng = random.Random(seed)
        self.heldout = set(tuple(k) for k in heldout_keys)
        self.excluded = set(excluded_words)
        self.train_words = [w for w in WORDS if w not in self.excluded]
        self.spelled = set()   # every word a spelling question was asked about
        self.cats = [c for c, _ in self.WEIGHTS]
        self.cum = []
        total = 0.0
        for _, w in self.WEIGHTS:
            total += w
            self.cum.append(total)

    def word(self):
        rng = self.rng
        while True:
            w = rng.choice(self.train_words) if rng.random() < 0.35 else pseudo_word(rng)
            if w not in self.excluded:
                self.spelled.add(w)
                return w

    def question(self):
        rng = self.rng
        while True:
            r = rng.random() * self.cum[-1]
            cat = next(c for c, t in zip(self.cats, self.cum) if r < t)
            if cat == "add":
                key, q, a = q_add(rng)
            elif cat == "sub":
                key, q, a = q_sub(rng)
            elif cat == "units":
                key, q, a = q_units(rng)
            elif cat == "numwords":
                key, q, a = q_numwords(rng)
            elif cat == "dates":
                key, q, a = q_dates_shift(rng) if rng.random() < 0.8 else q_dates_other(rng)
            elif cat == "spelling":
                key, q, a = q_spelling(rng, self.word())
            else:
                key, q, a = q_chat(rng)
            if key not in self.heldout:
                return cat, q, a

    def dialogue(self):
        """{"system": str or None, "turns": [(question, answer), ...]}"""
        rng = self.rng
        system = rng.choice(SYSTEM_PROMPTS) if rng.random() < 0.2 else None
        n = rng.choices([1, 2, 3], weights=[0.55, 0.3, 0.15])[0]
        turns = [self.question()[1:] for _ in range(n)]
        return {"system": system, "turns": turns}


def render(dialogue):
    """The ChatML text exactly as the Qwen3 template renders the conversation for a generation
    prompt (earlier assistant turns closed with <|im_end|>\\n), split into (text, is_target)
    pieces: the assistant answers and their <|im_end|> are the targets."""
    pieces = []
    if dialogue["system"] is not None:
        pieces.append(("<|im_start|>system\n" + dialogue["system"] + "<|im_end|>\n", False))
    for q, a in dialogue["turns"]:
        pieces.append(("<|im_start|>user\n" + q + "<|im_end|>\n<|im_start|>assistant\n", False))
        pieces.append((a + "<|im_end|>", True))
        pieces.append(("\n", False))
    return pieces


def tokenizer_texts(sampler, count):
    """Plain text lines for training the BPE (no special tokens)."""
    out = []
    for _ in range(count):
        d = sampler.dialogue()
        if d["system"]:
            out.append("system\n" + d["system"])
        for q, a in d["turns"]:
            out.append("user\n" + q)
            out.append("assistant\n" + a)
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--show", type=int, default=12)
    args = p.parse_args()
    words = reserved_words(args.seed)
    held = heldout_questions(args.seed, words)
    s = Sampler(args.seed, [h["key"] for h in held], words)
    for _ in range(args.show):
        print("".join(t for t, _ in render(s.dialogue())))
        print("----")
    for h in held[::10]:
        print(h["category"], "|", h["question"], "->", h["answer"])
    from collections import Counter
    print(Counter(h["category"] for h in held), len(held))
    print(len(WORDS), "words;", len(s.train_words), "for training")


if __name__ == "__main__":
    main()
