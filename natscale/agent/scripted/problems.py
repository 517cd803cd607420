"""Word-problem families for the synthetic math ReAct task (see ``synthetic.py``).

A problem is a question plus a *plan*: calculator steps whose arguments are numbers written in the
question or results of earlier steps (``Ref``). The plan is symbolic so that a simulated agent can
substitute the values it actually observed, and a wrong number early on propagates like it would.
Every family only draws numbers from ``rng`` (a ``random.Random``), so problems are reproducible.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Ref:
    """The result of plan step ``index``."""

    index: int


Arg = str | Ref  # a number as written in the question, or an earlier step's result


@dataclass(frozen=True)
class PlanStep:
    """One calculator call of the gold solution.

    ``template`` uses positional fields (``"{0} * {1}"``) filled from ``args``. ``goal`` is a noun
    phrase ("the cost of the notebooks"), ``why`` a clause stating the facts used. ``sentence`` is
    the GSM8K-style solution line with a ``{calc}`` field (``4*3=<<4*3=12>>12``). ``wrong`` is a
    plausible wrong operation (same arguments) for reasoning-error failures, or None.
    """

    template: str
    args: tuple[Arg, ...]
    goal: str
    why: str
    sentence: str
    wrong: str | None = None


@dataclass(frozen=True)
class Problem:
    """A question with its gold plan; ``conclusion`` has an ``{answer}`` field."""

    family: str
    question: str
    ask: str  # what the question asks for, as a noun phrase
    steps: tuple[PlanStep, ...]
    conclusion: str
    unit: str  # word a sloppy answer may append ("dollars", "minutes", "")
    currency: str  # "$", "€" or "" — a sloppy answer may prepend it


_PEOPLE = (
    ("Maria", "she"), ("José", "he"), ("Zoë", "she"), ("Renée", "she"), ("Björn", "he"),
    ("Aisha", "she"), ("Liam", "he"), ("Chen", "he"), ("Priya", "she"), ("Tomás", "he"),
    ("Hannah", "she"), ("Kofi", "he"), ("Yuki", "she"), ("Omar", "he"), ("Elena", "she"),
    ("Noah", "he"), ("Fatima", "she"), ("Lucas", "he"), ("Amara", "she"), ("Mateo", "he"),
    ("Sofia", "she"), ("Ethan", "he"), ("Ingrid", "she"), ("Darius", "he"), ("Léa", "she"),
)  # fmt: skip
_ITEMS = (
    ("notebook", "notebooks"), ("pen", "pens"), ("apple", "apples"), ("sandwich", "sandwiches"),
    ("candle", "candles"), ("mug", "mugs"), ("ticket", "tickets"), ("plant", "plants"),
    ("book", "books"), ("scarf", "scarves"), ("puzzle", "puzzles"), ("bottle of juice", "bottles of juice"),
)  # fmt: skip
_BIG_ITEMS = ("bicycle", "jacket", "laptop bag", "pair of shoes", "guitar", "desk lamp", "backpack")
_THINGS = ("stickers", "marbles", "cookies", "stamps", "seashells", "crayons", "trading cards")


class _Ctx:
    """Random choices shared by the families: people, currency, items."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.name, self.subj = rng.choice(_PEOPLE)
        others = [p for p in _PEOPLE if p[0] != self.name]
        self.name2 = rng.choice(others)[0]
        self.poss = {"she": "her", "he": "his"}[self.subj]
        self.cur, self.money = ("€", "euros") if rng.random() < 0.2 else ("$", "dollars")

    def Subj(self) -> str:  # capitalised pronoun; reads like the text it makes
        return self.subj.capitalize()

    def n(self, lo: int, hi: int, step: int = 1) -> str:
        return str(self.rng.randrange(lo, hi + 1, step))

    def price(self, lo: int, hi: int) -> str:
        """A price in whole units or with 50/25/75 cents, as written in a question."""
        whole = self.rng.randint(lo, hi)
        cents = self.rng.choice((0, 0, 0, 50, 50, 25, 75))
        return str(whole) if cents == 0 else f"{whole}.{cents:02d}"


def _s(template: str, args: tuple[Arg, ...], goal: str, why: str, sentence: str, wrong=None):
    return PlanStep(template, args, goal, why, sentence, wrong)


def shopping_two_items(c: _Ctx) -> Problem:
    (_, p1n), (_, p2n) = c.rng.sample(_ITEMS, 2)
    a, b = c.n(2, 9), c.n(2, 12, 2)
    pa, pb = c.price(1, 15), c.price(1, 9)
    q = (
        f"{c.name} buys {a} {p1n} for {c.cur}{pa} each and {b} {p2n} for {c.cur}{pb} each. "
        f"How much money does {c.subj} spend in total?"
    )
    steps = (
        _s("{0} * {1}", (a, pa), f"the cost of the {p1n}", f"{c.name} buys {a} {p1n} at {c.cur}{pa} each",
           f"The {p1n} cost {{calc}} {c.money}.", "{0} + {1}"),
        _s("{0} * {1}", (b, pb), f"the cost of the {p2n}", f"{c.Subj()} also buys {b} {p2n} at {c.cur}{pb} each",
           f"The {p2n} cost {{calc}} {c.money}."),
        _s("{0} + {1}", (Ref(0), Ref(1)), "the total cost", f"The total is the cost of the {p1n} plus the cost of the {p2n}",
           f"In total {c.subj} spends {{calc}} {c.money}."),
    )  # fmt: skip
    if c.rng.random() < 0.5:
        bill = str(c.rng.choice((50, 100, 100, 200)))
        q = q.replace(
            "How much money does",
            f"{c.Subj()} pays with a {c.cur}{bill} bill. How much change does",
        )
        q = q.replace("spend in total?", "get back?")
        steps += (
            _s("{0} - {1}", (bill, Ref(2)), "the change", f"{c.Subj()} pays with a {c.cur}{bill} bill",
               f"{c.Subj()} gets {{calc}} {c.money} in change.", "{1} - {0}"),
        )  # fmt: skip
        return Problem("shopping", q, f"the change {c.name} gets", steps,
                       f"{c.name} gets {c.cur}{{answer}} in change.", c.money, c.cur)  # fmt: skip
    return Problem("shopping", q, f"the total amount {c.name} spends", steps,
                   f"{c.name} spends {c.cur}{{answer}} in total.", c.money, c.cur)  # fmt: skip


def shopping_packs(c: _Ctx) -> Problem:
    item, items = c.rng.choice(_ITEMS)
    packs, per, price = c.n(2, 12), c.n(4, 12), c.price(1, 6)
    q = (
        f"A store sells {items} in packs of {per}. {c.name} buys {packs} packs, and each {item} costs "
        f"{c.cur}{price}. How much does {c.subj} pay?"
    )
    steps = (
        _s("{0} * {1}", (packs, per), f"the number of {items}", f"There are {packs} packs with {per} {items} in each",
           f"{c.name} buys {{calc}} {items}.", "{0} + {1}"),
        _s("{0} * {1}", (Ref(0), price), "the total price", f"Each {item} costs {c.cur}{price}",
           f"{c.Subj()} pays {{calc}} {c.money}."),
    )  # fmt: skip
    return Problem("shopping", q, f"how much {c.name} pays", steps,
                   f"{c.name} pays {c.cur}{{answer}}.", c.money, c.cur)  # fmt: skip


def rates_two_legs(c: _Ctx) -> Problem:
    vehicle = c.rng.choice(("train", "bus", "car", "truck", "ferry"))
    s1, t1, s2, t2 = c.n(30, 120, 5), c.n(2, 6), c.n(30, 120, 5), c.n(2, 5)
    q = (
        f"A {vehicle} travels at {s1} km per hour for {t1} hours and then at {s2} km per hour for "
        f"{t2} hours. How many kilometers does it travel in total?"
    )
    steps = (
        _s("{0} * {1}", (s1, t1), "the distance of the first part", f"The {vehicle} goes {s1} km per hour for {t1} hours",
           "First it travels {calc} km.", "{0} + {1}"),
        _s("{0} * {1}", (s2, t2), "the distance of the second part", f"Then it goes {s2} km per hour for {t2} hours",
           "Then it travels {calc} km."),
        _s("{0} + {1}", (Ref(0), Ref(1)), "the total distance", "The total distance is the sum of both parts",
           "Altogether it travels {calc} km."),
    )  # fmt: skip
    return Problem("rates", q, f"the total distance the {vehicle} travels", steps,
                   "The total distance is {answer} km.", "km", "")  # fmt: skip


def rates_printer(c: _Ctx) -> Problem:
    machine = c.rng.choice(("printer", "copier", "press"))
    rate = c.n(8, 40)
    minutes = c.n(5, 60)
    pages = str(int(rate) * int(minutes))
    q = f"A {machine} prints {rate} pages per minute. How many minutes does it take to print {pages} pages?"
    steps = (
        _s("{0} / {1}", (pages, rate), "the number of minutes", f"It prints {rate} pages every minute and needs {pages} pages",
           "It takes {calc} minutes.", "{0} * {1}"),
    )  # fmt: skip
    return Problem("rates", q, "the printing time in minutes", steps,
                   "It takes {answer} minutes.", "minutes", "")  # fmt: skip


def rates_reading(c: _Ctx) -> Problem:
    per_day, days, read = c.n(8, 30), c.n(3, 20), c.n(20, 120)
    total = str(int(per_day) * int(days) + int(read))
    q = (
        f"{c.name}'s book has {total} pages. {c.Subj()} has already read {read} pages and reads "
        f"{per_day} pages every day. How many more days does {c.subj} need to finish the book?"
    )
    steps = (
        _s("{0} - {1}", (total, read), "the number of pages left", f"The book has {total} pages and {read} are already read",
           "There are {calc} pages left.", "{0} + {1}"),
        _s("{0} / {1}", (Ref(0), per_day), "the number of days", f"{c.Subj()} reads {per_day} pages per day",
           f"{c.Subj()} needs {{calc}} more days."),
    )  # fmt: skip
    return Problem("rates", q, f"how many more days {c.name} needs", steps,
                   f"{c.name} needs {{answer}} more days.", "days", "")  # fmt: skip


def rates_wage(c: _Ctx) -> Problem:
    wage, hours, days = c.price(9, 30), c.n(3, 9), c.n(3, 6)
    q = (
        f"{c.name} earns {c.cur}{wage} per hour. {c.Subj()} works {hours} hours a day for {days} days. "
        f"How much does {c.subj} earn?"
    )
    steps = (
        _s("{0} * {1}", (wage, hours), "the daily pay", f"{c.Subj()} earns {c.cur}{wage} per hour for {hours} hours a day",
           f"Each day {c.subj} earns {{calc}} {c.money}.", "{0} + {1}"),
        _s("{0} * {1}", (Ref(0), days), "the total pay", f"{c.Subj()} works {days} days",
           f"In total {c.subj} earns {{calc}} {c.money}."),
    )  # fmt: skip
    if c.rng.random() < 0.5:
        spent = c.n(10, 60)
        q = q.replace(
            "How much does", f"{c.Subj()} spends {c.cur}{spent} on lunch. How much money does"
        )
        q = q.replace("earn?", "have left?")
        steps += (
            _s("{0} - {1}", (Ref(1), spent), "the money left", f"{c.Subj()} spends {c.cur}{spent} on lunch",
               f"{c.Subj()} has {{calc}} {c.money} left.", "{0} + {1}"),
        )  # fmt: skip
        return Problem("rates", q, f"the money {c.name} has left", steps,
                       f"{c.name} has {c.cur}{{answer}} left.", c.money, c.cur)  # fmt: skip
    return Problem("rates", q, f"how much {c.name} earns", steps,
                   f"{c.name} earns {c.cur}{{answer}}.", c.money, c.cur)  # fmt: skip


def rates_tank(c: _Ctx) -> Problem:
    rate, minutes = c.n(5, 40), c.n(3, 25)
    capacity = str(int(rate) * int(minutes) + int(c.n(10, 400, 10)))
    q = (
        f"A tank holds {capacity} liters. Water flows in at {rate} liters per minute. After {minutes} "
        f"minutes, how many more liters are needed to fill the empty tank?"
    )
    steps = (
        _s("{0} * {1}", (rate, minutes), "the water already in the tank", f"Water flows in at {rate} liters per minute for {minutes} minutes",
           "After that time the tank has {calc} liters.", "{0} + {1}"),
        _s("{0} - {1}", (capacity, Ref(0)), "the liters still needed", f"The tank holds {capacity} liters",
           "It still needs {calc} liters.", "{0} + {1}"),
    )  # fmt: skip
    return Problem("rates", q, "the liters still needed", steps,
                   "The tank needs {answer} more liters.", "liters", "")  # fmt: skip


def sharing_fraction(c: _Ctx) -> Problem:
    thing = c.rng.choice(_THINGS)
    k, m = c.rng.choice((2, 3, 4, 5)), c.rng.randint(2, 8)
    n = str(k * m * c.rng.randint(2, 12))  # n/k and the rest shared among m are whole numbers
    q = (
        f"{c.name} has {n} {thing}. {c.Subj()} gives 1/{k} of them to {c.name2} and shares the rest "
        f"equally among {m} friends. How many {thing} does each friend get?"
    )
    steps = (
        _s("{0} / {1}", (n, str(k)), f"the {thing} given to {c.name2}", f"{c.Subj()} gives 1/{k} of {n} {thing} to {c.name2}",
           f"{c.name2} gets {{calc}} {thing}.", "{0} * {1}"),
        _s("{0} - {1}", (n, Ref(0)), f"the {thing} left", f"{c.name} started with {n} {thing}",
           f"{c.Subj()} has {{calc}} {thing} left."),
        _s("{0} / {1}", (Ref(1), str(m)), "the share of each friend", f"The rest is shared among {m} friends",
           "Each friend gets {calc} " + thing + ".", "{0} * {1}"),
    )  # fmt: skip
    return Problem("sharing", q, "how many each friend gets", steps,
                   f"Each friend gets {{answer}} {thing}.", thing, "")  # fmt: skip


def sharing_groups(c: _Ctx) -> Problem:
    group, groups, per = c.n(3, 8), c.n(3, 12), c.n(2, 9)
    students = str(int(group) * int(groups))
    thing = c.rng.choice(("worksheets", "markers", "glue sticks", "rulers", "paint brushes"))
    q = (
        f"A class of {students} students is split into groups of {group}. Each group needs {per} "
        f"{thing}. How many {thing} does the teacher need?"
    )
    steps = (
        _s("{0} / {1}", (students, group), "the number of groups", f"{students} students make groups of {group}",
           "There are {calc} groups.", "{0} * {1}"),
        _s("{0} * {1}", (Ref(0), per), f"the number of {thing}", f"Each group needs {per} {thing}",
           f"The teacher needs {{calc}} {thing}."),
    )  # fmt: skip
    return Problem("sharing", q, f"the number of {thing} needed", steps,
                   f"The teacher needs {{answer}} {thing}.", thing, "")  # fmt: skip


def sharing_boxes(c: _Ctx) -> Problem:
    box, boxes, price = c.n(4, 24), c.n(3, 30), c.price(2, 12)
    cookies = str(int(box) * int(boxes))
    q = (
        f"A bakery packs {cookies} cookies into boxes of {box}. Each box sells for {c.cur}{price}. "
        f"How much money does the bakery make if it sells all the boxes?"
    )
    steps = (
        _s("{0} / {1}", (cookies, box), "the number of boxes", f"{cookies} cookies go into boxes of {box}",
           "The bakery fills {calc} boxes.", "{0} * {1}"),
        _s("{0} * {1}", (Ref(0), price), "the money made", f"Each box sells for {c.cur}{price}",
           f"It makes {{calc}} {c.money}."),
    )  # fmt: skip
    return Problem("sharing", q, "the money the bakery makes", steps,
                   f"The bakery makes {c.cur}{{answer}}.", c.money, c.cur)  # fmt: skip


def percent_discount(c: _Ctx) -> Problem:
    item = c.rng.choice(_BIG_ITEMS)
    off = c.rng.choice((10, 15, 20, 25, 30, 40, 50))
    price = str(c.rng.randrange(20, 400, 20))
    q = f"A {item} costs {c.cur}{price}. It is on sale for {off}% off. What is the sale price?"
    steps = (
        _s("{0} * {1} / 100", (price, str(off)), "the discount", f"The {item} costs {c.cur}{price} and the discount is {off}%",
           f"The discount is {{calc}} {c.money}.", "{0} / {1}"),
        _s("{0} - {1}", (price, Ref(0)), "the sale price", "The sale price is the original price minus the discount",
           f"The sale price is {{calc}} {c.money}.", "{0} + {1}"),
    )  # fmt: skip
    if c.rng.random() < 0.4:
        tax = c.rng.choice((5, 10, 20))
        q = q.replace(
            "What is the sale price?",
            f"A sales tax of {tax}% is added to the sale price. How much does the {item} cost in the end?",
        )
        steps += (
            _s("{0} * {1} / 100", (Ref(1), str(tax)), "the tax", f"A {tax}% tax is added to the sale price",
               f"The tax is {{calc}} {c.money}."),
            _s("{0} + {1}", (Ref(1), Ref(2)), "the final price", "The final price is the sale price plus the tax",
               f"The final price is {{calc}} {c.money}.", "{0} - {1}"),
        )  # fmt: skip
        return Problem("percentages", q, f"the final price of the {item}", steps,
                       f"The {item} costs {c.cur}{{answer}} in the end.", c.money, c.cur)  # fmt: skip
    return Problem("percentages", q, f"the sale price of the {item}", steps,
                   f"The sale price is {c.cur}{{answer}}.", c.money, c.cur)  # fmt: skip


def percent_score(c: _Ctx) -> Problem:
    total = c.rng.choice((20, 25, 40, 50, 80))
    right = str(c.rng.randrange(total // 2, total + 1, total // 20 if total % 20 == 0 else 1))
    q = f"{c.name} answered {right} out of {total} questions correctly on a test. What percentage did {c.subj} get right?"
    steps = (
        _s("{0} / {1} * 100", (right, str(total)), "the percentage", f"{c.Subj()} got {right} of {total} questions right",
           f"{c.Subj()} got {{calc}} percent right.", "{1} / {0} * 100"),
    )  # fmt: skip
    return Problem("percentages", q, f"the percentage {c.name} got right", steps,
                   f"{c.name} got {{answer}}% right.", "percent", "")  # fmt: skip


def percent_tip(c: _Ctx) -> Problem:
    people, tip = c.rng.randint(3, 6), c.rng.choice((10, 15, 20))
    bill = str(c.rng.randrange(40, 400, 20))
    q = (
        f"The bill for dinner is {c.cur}{bill}. {c.name} and {people - 1} friends leave a {tip}% tip and "
        f"split the total equally. How much does each person pay?"
    )
    steps = (
        _s("{0} * {1} / 100", (bill, str(tip)), "the tip", f"The tip is {tip}% of {c.cur}{bill}",
           f"The tip is {{calc}} {c.money}.", "{0} / {1}"),
        _s("{0} + {1}", (bill, Ref(0)), "the total with the tip", "The total is the bill plus the tip",
           f"The total is {{calc}} {c.money}."),
        _s("{0} / {1}", (Ref(1), str(people)), "each person's share", f"There are {people} people in total",
           f"Each person pays {{calc}} {c.money}.", "{0} / {1} - 1"),
    )  # fmt: skip
    return Problem("percentages", q, "the amount each person pays", steps,
                   f"Each person pays {c.cur}{{answer}}.", c.money, c.cur)  # fmt: skip


def combo_carpet(c: _Ctx) -> Problem:
    a, b, rooms, price = c.n(3, 9), c.n(3, 12), c.n(2, 5), c.price(8, 40)
    q = (
        f"Each room in {c.name}'s house measures {a} m × {b} m. Carpet costs {c.cur}{price} per square "
        f"meter. How much does it cost to carpet {rooms} such rooms?"
    )
    steps = (
        _s("{0} * {1}", (a, b), "the area of one room", f"One room is {a} m × {b} m",
           "One room has an area of {calc} square meters.", "{0} + {1}"),
        _s("{0} * {1}", (Ref(0), rooms), "the total area", f"There are {rooms} rooms",
           "The total area is {calc} square meters."),
        _s("{0} * {1}", (Ref(1), price), "the total cost", f"Carpet costs {c.cur}{price} per square meter",
           f"The carpet costs {{calc}} {c.money}."),
    )  # fmt: skip
    return Problem("multi-step", q, "the cost of the carpet", steps,
                   f"Carpeting the rooms costs {c.cur}{{answer}}.", c.money, c.cur)  # fmt: skip


def combo_eggs(c: _Ctx) -> Problem:
    hens, eggs, weeks = str(12 * c.rng.randint(1, 4)), c.n(2, 4), c.n(2, 4)
    price = c.price(2, 6)
    q = (
        f"{c.name} has {hens} hens that each lay {eggs} eggs a day. {c.Subj()} sells the eggs by the "
        f"dozen for {c.cur}{price} a dozen. How much money does {c.subj} make in {weeks} weeks?"
    )
    steps = (
        _s("{0} * {1}", (hens, eggs), "the eggs per day", f"{hens} hens lay {eggs} eggs each per day",
           "The hens lay {calc} eggs a day.", "{0} + {1}"),
        _s("{0} * 7", (Ref(0),), "the eggs per week", "A week has 7 days",
           "That is {calc} eggs a week."),
        _s("{0} * {1}", (Ref(1), weeks), "the eggs in all the weeks", f"The time is {weeks} weeks",
           "In total there are {calc} eggs."),
        _s("{0} / 12", (Ref(2),), "the number of dozens", "A dozen is 12 eggs",
           "That makes {calc} dozen.", "{0} * 12"),
        _s("{0} * {1}", (Ref(3), price), "the money made", f"Each dozen sells for {c.cur}{price}",
           f"{c.Subj()} makes {{calc}} {c.money}."),
    )  # fmt: skip
    return Problem("multi-step", q, f"the money {c.name} makes", steps,
                   f"{c.name} makes {c.cur}{{answer}}.", c.money, c.cur)  # fmt: skip


def combo_bake_sale(c: _Ctx) -> Problem:
    trays, per, sold, price = c.n(2, 8), c.n(12, 24, 4), c.rng.choice((50, 75, 100)), c.price(1, 3)
    cost = c.n(5, 30)
    q = (
        f"For a bake sale, {c.name} bakes {trays} trays of {per} muffins. {c.Subj()} sells {sold}% of "
        f"them for {c.cur}{price} each. The ingredients cost {c.cur}{cost}. What is {c.poss} profit?"
    )
    steps = (
        _s("{0} * {1}", (trays, per), "the number of muffins", f"{c.Subj()} bakes {trays} trays of {per} muffins",
           "There are {calc} muffins.", "{0} + {1}"),
        _s("{0} * {1} / 100", (Ref(0), str(sold)), "the muffins sold", f"{c.Subj()} sells {sold}% of them",
           f"{c.Subj()} sells {{calc}} muffins."),
        _s("{0} * {1}", (Ref(1), price), "the money from sales", f"Each muffin sells for {c.cur}{price}",
           f"The sales bring in {{calc}} {c.money}."),
        _s("{0} - {1}", (Ref(2), cost), "the profit", f"The ingredients cost {c.cur}{cost}",
           f"The profit is {{calc}} {c.money}.", "{0} + {1}"),
    )  # fmt: skip
    return Problem("multi-step", q, f"{c.name}'s profit", steps,
                   f"{c.name}'s profit is {c.cur}{{answer}}.", c.money, c.cur)  # fmt: skip


def combo_savings(c: _Ctx) -> Problem:
    item = c.rng.choice(_BIG_ITEMS)
    chores, gift, weeks = c.n(3, 15), c.n(2, 10), c.n(3, 20)
    have = c.n(0, 60, 5)
    cost = str((int(chores) + int(gift)) * int(weeks) + int(have))
    q = (
        f"{c.name} wants a {item} that costs {c.cur}{cost}. {c.Subj()} already has {c.cur}{have}. Every "
        f"week {c.subj} earns {c.cur}{chores} from chores and gets {c.cur}{gift} from {c.poss} "
        f"grandmother. How many weeks does {c.subj} need to save?"
    )
    steps = (
        _s("{0} + {1}", (chores, gift), "the weekly savings", f"{c.Subj()} gets {c.cur}{chores} plus {c.cur}{gift} each week",
           f"{c.Subj()} saves {{calc}} {c.money} a week.", "{0} * {1}"),
        _s("{0} - {1}", (cost, have), "the amount still needed", f"The {item} costs {c.cur}{cost} and {c.subj} has {c.cur}{have}",
           f"{c.Subj()} still needs {{calc}} {c.money}.", "{0} + {1}"),
        _s("{0} / {1}", (Ref(1), Ref(0)), "the number of weeks", "Each week adds the weekly savings",
           f"{c.Subj()} needs {{calc}} weeks."),
    )  # fmt: skip
    return Problem("multi-step", q, "the number of weeks", steps,
                   f"{c.name} needs {{answer}} weeks.", "weeks", "")  # fmt: skip


def combo_fuel(c: _Ctx) -> Problem:
    per100, hundreds, price = c.n(5, 12), c.n(2, 9), c.price(1, 2)
    km = str(int(hundreds) * 100)
    q = (
        f"{c.name}'s car uses {per100} liters of fuel per 100 km. Fuel costs {c.cur}{price} per liter. "
        f"How much does the fuel for a {km} km trip cost?"
    )
    steps = (
        _s("{0} / 100", (km,), "the number of 100 km blocks", f"The trip is {km} km",
           "The trip is {calc} blocks of 100 km.", "{0} / 10"),
        _s("{0} * {1}", (Ref(0), per100), "the fuel needed", f"The car uses {per100} liters per 100 km",
           "The car needs {calc} liters."),
        _s("{0} * {1}", (Ref(1), price), "the fuel cost", f"Fuel costs {c.cur}{price} per liter",
           f"The fuel costs {{calc}} {c.money}."),
    )  # fmt: skip
    return Problem("multi-step", q, "the fuel cost of the trip", steps,
                   f"The fuel costs {c.cur}{{answer}}.", c.money, c.cur)  # fmt: skip


FAMILIES: dict[str, tuple[Callable[[_Ctx], Problem], ...]] = {
    "shopping": (shopping_two_items, shopping_packs),
    "rates": (rates_two_legs, rates_printer, rates_reading, rates_wage, rates_tank),
    "sharing": (sharing_fraction, sharing_groups, sharing_boxes),
    "percentages": (percent_discount, percent_score, percent_tip),
    "multi-step": (combo_carpet, combo_eggs, combo_bake_sale, combo_savings, combo_fuel),
}


def draw_problem(rng: random.Random) -> Problem:
    """One problem from a uniformly chosen family and template (not yet checked for nice numbers)."""
    family = rng.choice(sorted(FAMILIES))
    return rng.choice(FAMILIES[family])(_Ctx(rng))
