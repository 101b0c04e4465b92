"""Names for cuisines, dish types and ingredients, so label read-outs look like recipes.

Word lists are short on purpose; beyond them names are generated (``ingredient_0123``).
"""

from __future__ import annotations

VISIBLE_WORDS = (
    "garlic", "onion", "chicken", "tomato", "basil", "carrot", "potato", "rice", "lemon",
    "mushroom", "spinach", "beef", "salmon", "prawn", "egg", "cheddar", "mozzarella",
    "parmesan", "aubergine", "courgette", "red pepper", "chickpea", "lentil", "broccoli",
    "cabbage", "cucumber", "avocado", "lime", "coriander", "parsley", "mint", "ginger",
    "chilli", "spring onion", "leek", "celery", "pea", "sweetcorn", "bacon", "sausage",
    "lamb", "pork", "tofu", "noodle", "pasta", "bread", "butter", "cream", "yoghurt",
    "feta", "olive", "pine nut", "almond", "walnut", "apple", "pear", "strawberry",
    "blueberry", "mango", "coconut", "pineapple", "beetroot", "squash", "kale",
    "asparagus", "halloumi", "chorizo", "cod", "tuna", "mussel", "fennel", "radish",
)  # fmt: skip

# Ingredients that leave no visible trace in a photo of the dish: known from recipes only.
# Pantry staples go into dishes of every cuisine; seasonings are tied to one cuisine.
PANTRY_WORDS = (
    "salt", "olive oil", "black pepper", "sugar", "water", "vegetable stock",
    "white wine vinegar", "baking powder", "bay leaf", "lemon juice",
)  # fmt: skip
SEASONING_WORDS = (
    "cumin", "paprika", "garam masala", "soy sauce", "dried oregano", "cinnamon",
    "nutmeg", "honey", "vanilla extract", "chilli flakes",
)  # fmt: skip

CUISINE_WORDS = (
    "italian", "indian", "japanese", "mexican", "french", "thai", "greek", "chinese",
    "spanish", "moroccan", "korean", "lebanese",
)  # fmt: skip

DISH_KINDS = (
    "salad", "soup", "stew", "curry", "roast", "pasta", "stir-fry", "pie", "grill", "bake",
    "rice bowl", "noodles", "tart", "skewers", "dumplings", "flatbread",
)  # fmt: skip


def names(words: tuple[str, ...], n: int, fallback: str) -> list[str]:
    """The first ``n`` of ``words``, then ``fallback_0001``, ``fallback_0002``, ..."""
    extra = [f"{fallback}_{i:04d}" for i in range(1, max(0, n - len(words)) + 1)]
    return list(words[:n]) + extra


def dish_type_names(cuisines: list[str], cuisine_of_dish: list[int]) -> list[str]:
    """``"<cuisine> <kind>"`` names; kinds rotate per cuisine, numbered once they run out."""
    used: dict[int, int] = {}
    out = []
    for c in cuisine_of_dish:
        k = used.get(c, 0)
        used[c] = k + 1
        kind = DISH_KINDS[(k + 5 * c) % len(DISH_KINDS)]
        suffix = f" {k // len(DISH_KINDS) + 1}" if k >= len(DISH_KINDS) else ""
        out.append(f"{cuisines[c]} {kind}{suffix}")
    return out
