"""A learnable synthetic Recipe1M: ``python -m data.synthetic --out DIR --recipes N --seed S``.

Writes every Recipe1M file of SPEC section 2 into ``DIR`` (``layer1.json``, ``layer2.json``,
``det_ingrs.json``, ``classes1M.pkl``, ``{train,val,test}_keys.pkl``), the translations
``layer1_{de,ru,fr,de-en,ru-en}.json`` rendered from a built-in lexicon, and JPEG images under
``DIR/images/<partition>/<c1>/<c2>/<c3>/<c4>/<image id>.jpg``; so ``--r1m_path DIR
--img_path DIR/images``. ``synthetic.json`` (parameters and counts) is written last, so its
presence marks a finished set.

Why it is learnable: recipes come from dish templates (a core set of ingredients plus random
extras), and every image is drawn from its recipe: each ingredient has its own look (colour,
shape, texture), the dish type sets the plate and the background colour, and placement, scale,
rotation, lighting and noise are random. Images of one recipe show the same ingredients in other
places and light; many recipes share most of their ingredients, so retrieval needs the details.

Determinism: every random draw comes from a numpy ``Generator`` seeded by a fixed tuple, so the
same arguments give byte-identical files whatever ``--workers``. Streams: ``[seed, 0]`` ids,
``[seed, 1, i]`` recipe ``i``, ``[seed, 2, i, k]`` its image ``k``, ``[seed, 3, block]`` the rare
features of a block of recipes, ``[seed, 4, i, lang]`` back-translation wording, ``[seed, 5]``
the order of ``layer2.json`` (a permutation, so that readers must keep layer2 order for keys).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import multiprocessing
import os
import sys
import time
from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from tqdm import tqdm

from data.recipe1m import PARTITIONS, image_path, write_classes, write_keys
from utils.io import atomic_write_json

# --- lexicon ------------------------------------------------------------------------------------
# One entry a line, fields separated by "|". English fields may be "singular;plural". The "syn"
# field is the English word a back-translation (de-en, ru-en) may use instead.

# en | syn | de | ru | fr | colour | unit kind
_INGREDIENTS = """
flour|wheat flour|Mehl|мука|farine|#f2ead8|dry
sugar|white sugar|Zucker|сахар|sucre|#fbfbf5|dry
brown sugar|cane sugar|brauner Zucker|коричневый сахар|sucre roux|#a0672d|dry
butter|unsalted butter|Butter|сливочное масло|beurre|#f6df8a|spoon
egg;eggs|large egg;large eggs|Ei|яйцо|œuf|#fff4cf|count
milk|whole milk|Milch|молоко|lait|#fdfdf8|liquid
cream|heavy cream|Sahne|сливки|crème|#fff9e6|liquid
cheese|grated cheese|Käse|сыр|fromage|#f5c542|sliced
mozzarella|fresh mozzarella|Mozzarella|моцарелла|mozzarella|#f8f6ee|dry
parmesan|parmigiano|Parmesan|пармезан|parmesan|#eed9a0|dry
feta|feta cheese|Feta|фета|feta|#f4f4ec|dry
yogurt|plain yogurt|Joghurt|йогурт|yaourt|#f7f7f2|liquid
tomato;tomatoes|ripe tomato;ripe tomatoes|Tomate|помидор|tomate|#d8322a|count
onion;onions|yellow onion;yellow onions|Zwiebel|лук|oignon|#e8d3a6|count
red onion;red onions|purple onion;purple onions|rote Zwiebel|красный лук|oignon rouge|#8e3b6b|count
garlic|garlic cloves|Knoblauch|чеснок|ail|#f1ecd9|spice
carrot;carrots|baby carrot;baby carrots|Karotte|морковь|carotte|#f08a24|count
potato;potatoes|russet potato;russet potatoes|Kartoffel|картофель|pomme de terre|#c9a66b|count
sweet potato;sweet potatoes|yam;yams|Süßkartoffel|батат|patate douce|#d9733a|count
celery|celery stalks|Sellerie|сельдерей|céleri|#9ccc65|count
cucumber;cucumbers|english cucumber;english cucumbers|Gurke|огурец|concombre|#4f9a3a|count
lettuce|romaine|Kopfsalat|салат-латук|laitue|#8fd16a|dry
spinach|baby spinach|Spinat|шпинат|épinards|#2f6b2a|dry
kale|curly kale|Grünkohl|кейл|chou frisé|#33553a|dry
cabbage|green cabbage|Weißkohl|капуста|chou|#b5d99c|dry
broccoli|broccoli florets|Brokkoli|брокколи|brocoli|#2e8b3e|dry
cauliflower|cauliflower florets|Blumenkohl|цветная капуста|chou-fleur|#efe8d2|dry
zucchini;zucchinis|courgette;courgettes|Zucchini|кабачок|courgette|#3f7f2f|count
eggplant;eggplants|aubergine;aubergines|Aubergine|баклажан|aubergine|#4b2a4f|count
bell pepper;bell peppers|sweet pepper;sweet peppers|Paprika|болгарский перец|poivron|#ff5a1f|count
chili pepper;chili peppers|hot pepper;hot peppers|Chili|острый перец|piment|#b3001b|count
mushroom;mushrooms|button mushroom;button mushrooms|Champignon|гриб|champignon|#b89f86|count
corn|sweet corn|Mais|кукуруза|maïs|#f7d23e|canned
peas|green peas|Erbsen|горошек|petits pois|#77c043|dry
green beans|string beans|grüne Bohnen|стручковая фасоль|haricots verts|#4c9a2a|dry
black beans|black turtle beans|schwarze Bohnen|чёрная фасоль|haricots noirs|#2a2226|canned
chickpeas|garbanzo beans|Kichererbsen|нут|pois chiches|#e0c080|canned
lentils|red lentils|Linsen|чечевица|lentilles|#c8552b|dry
rice|white rice|Reis|рис|riz|#f9f7ef|dry
spaghetti|dried spaghetti|Spaghetti|спагетти|spaghetti|#efd27d|meat
noodles|egg noodles|Eiernudeln|лапша|nouilles|#e9cf7a|meat
bread|white bread|Brot|хлеб|pain|#d7a35f|sliced
tortilla;tortillas|flour tortilla;flour tortillas|Tortilla|тортилья|tortilla|#e9d3a1|count
oats|rolled oats|Haferflocken|овсяные хлопья|flocons d'avoine|#d8c39a|dry
chicken|chicken breast|Hähnchen|курица|poulet|#f0c8a0|meat
beef|ground beef|Rindfleisch|говядина|bœuf|#8b2f27|meat
pork|pork loin|Schweinefleisch|свинина|porc|#e7a79a|meat
bacon|smoked bacon|Speck|бекон|lard|#c0473f|sliced
ham|cooked ham|Schinken|ветчина|jambon|#f29aa5|sliced
sausage;sausages|pork sausage;pork sausages|Wurst|колбаса|saucisse|#9c4a32|count
salmon|salmon fillet|Lachs|лосось|saumon|#fa8a5f|meat
tuna|canned tuna|Thunfisch|тунец|thon|#b8857a|canned
shrimp|prawns|Garnelen|креветки|crevettes|#f7a07a|meat
tofu|firm tofu|Tofu|тофу|tofu|#f3efe0|meat
apple;apples|green apple;green apples|Apfel|яблоко|pomme|#7bc043|count
banana;bananas|ripe banana;ripe bananas|Banane|банан|banane|#ffe135|count
strawberries|fresh strawberries|Erdbeeren|клубника|fraises|#e0213f|dry
blueberries|wild blueberries|Heidelbeeren|черника|myrtilles|#3b4cca|dry
raspberries|fresh raspberries|Himbeeren|малина|framboises|#d3224f|dry
lemon;lemons|fresh lemon;fresh lemons|Zitrone|лимон|citron|#fff44f|count
lime;limes|key lime;key limes|Limette|лайм|citron vert|#9acd32|count
orange;oranges|navel orange;navel oranges|Orange|апельсин|orange|#ff9f1a|count
mango;mangoes|ripe mango;ripe mangoes|Mango|манго|mangue|#ffc324|count
pineapple|pineapple chunks|Ananas|ананас|ananas|#f4d35e|canned
avocado;avocados|hass avocado;hass avocados|Avocado|авокадо|avocat|#568203|count
olives|black olives|Oliven|оливки|olives|#3d3b2a|canned
walnuts|chopped walnuts|Walnüsse|грецкие орехи|noix|#8a6642|dry
almonds|sliced almonds|Mandeln|миндаль|amandes|#c69c6d|dry
peanuts|roasted peanuts|Erdnüsse|арахис|cacahuètes|#b8864b|dry
chocolate|dark chocolate|Schokolade|шоколад|chocolat|#4a2c1a|meat
cocoa|cocoa powder|Kakao|какао|cacao|#5c3a21|spice
honey|raw honey|Honig|мёд|miel|#e3a21a|spoon
vanilla|vanilla extract|Vanille|ваниль|vanille|#f3e5ab|spice
cinnamon|ground cinnamon|Zimt|корица|cannelle|#a0522d|spice
basil|fresh basil|Basilikum|базилик|basilic|#3c9d3c|spoon
parsley|fresh parsley|Petersilie|петрушка|persil|#56a846|spoon
cilantro|coriander|Koriander|кинза|coriandre|#4fb04f|spoon
ginger|fresh ginger|Ingwer|имбирь|gingembre|#d8b26e|spice
soy sauce|light soy sauce|Sojasoße|соевый соус|sauce soja|#3a1f12|spoon
tomato sauce|marinara|Tomatensoße|томатный соус|sauce tomate|#b22a1a|liquid
coconut milk|coconut cream|Kokosmilch|кокосовое молоко|lait de coco|#f7f3ea|canned
curry paste|curry|Currypaste|паста карри|pâte de curry|#d5671e|spoon
pumpkin|squash|Kürbis|тыква|citrouille|#ff7518|dry
beetroot|beets|Rote Bete|свёкла|betterave|#7d1935|count
"""

# Lines that are never drawn (det_ingrs marks them not valid). en | syn | de | ru | fr | unit kind
_PANTRY = """
salt|sea salt|Salz|соль|sel|taste
black pepper|ground pepper|schwarzer Pfeffer|чёрный перец|poivre noir|taste
water|cold water|Wasser|вода|eau|liquid
olive oil|extra virgin olive oil|Olivenöl|оливковое масло|huile d'olive|spoon
vegetable oil|cooking oil|Pflanzenöl|растительное масло|huile végétale|spoon
baking powder|baking soda|Backpulver|разрыхлитель|levure chimique|spice
"""

# key | en | syn | de | ru | fr | quantities ("count" has no unit word)
_UNITS = """
cup|cup;cups|glass;glasses|Tasse|стакан|tasse|1/2,1,1 1/2,2,3
tbsp|tablespoon;tablespoons|tbsp;tbsp|EL|ст. л.|c. à soupe|1,2,3,4
tsp|teaspoon;teaspoons|tsp;tsp|TL|ч. л.|c. à café|1/2,1,2
g|g;g|grams;grams|g|г|g|50,100,150,200,250,400,500
ml|ml;ml|milliliters;milliliters|ml|мл|ml|100,200,250,300,500
pinch|pinch;pinches|dash;dashes|Prise|щепотка|pincée|1,2
can|can;cans|tin;tins|Dose|банка|boîte|1,2
slice|slice;slices|piece;pieces|Scheibe|ломтик|tranche|2,4,6
count||||||1,2,3,4,6
"""
_UNIT_KINDS = {"dry": ("cup", "g", "tbsp"), "liquid": ("cup", "ml", "tbsp"), "count": ("count",),
               "meat": ("g",), "sliced": ("slice", "g"), "spice": ("tsp", "pinch", "tbsp"),
               "canned": ("can", "g", "cup"), "spoon": ("tbsp", "tsp"), "taste": ()}

# en | syn | de | ru | fr
_ADJECTIVES = """
spicy|hot|würzig|острый|épicé
creamy|smooth|cremig|сливочный|crémeux
easy|simple|einfach|простой|facile
classic|traditional|klassisch|классический|classique
homemade|home-made|hausgemacht|домашний|maison
quick|fast|schnell|быстрый|rapide
healthy|light|gesund|полезный|sain
rustic|country-style|rustikal|деревенский|rustique
fresh|freshly made|frisch|свежий|frais
sweet|sugary|süß|сладкий|sucré
hearty|filling|herzhaft|сытный|copieux
crispy|crunchy|knusprig|хрустящий|croustillant
grandma's|granny's|Omas|бабушкин|de grand-mère
summer|summery|sommerlich|летний|d'été
"""

# en | syn | de | ru | fr | class (prep, mix, cook)
_VERBS = """
chop|dice|hacken|нарезать|hacher|prep
slice|cut|schneiden|нарезать ломтиками|trancher|prep
peel|skin|schälen|очистить|éplucher|prep
grate|shred|reiben|натереть|râper|prep
wash|rinse|waschen|промыть|laver|prep
mix|combine|mischen|смешать|mélanger|mix
stir|mix well|rühren|помешать|remuer|mix
whisk|beat|verquirlen|взбить|fouetter|mix
fold|gently mix|unterheben|аккуратно вмешать|incorporer|mix
toss|turn|vermengen|перемешать|tourner|mix
bake|cook in the oven|backen|выпекать|cuire au four|cook
boil|cook|kochen|варить|bouillir|cook
simmer|cook gently|köcheln lassen|тушить|mijoter|cook
fry|pan-fry|braten|обжарить|frire|cook
roast|oven-roast|rösten|запечь|rôtir|cook
grill|barbecue|grillen|жарить на гриле|griller|cook
toast|brown|toasten|подрумянить|faire dorer|cook
blend|puree|pürieren|взбить в блендере|mixer|cook
"""

# en | syn | de | ru | fr | use (how: manner of work, serve: serving)
_PHRASES = """
in a large bowl|in a big bowl|in einer großen Schüssel|в большой миске|dans un grand bol|how
over medium heat|on medium heat|bei mittlerer Hitze|на среднем огне|à feu moyen|how
until golden|until golden brown|bis es goldbraun ist|до золотистого цвета|jusqu'à ce que ce soit doré|how
until soft|until tender|bis es weich ist|до мягкости|jusqu'à ce que ce soit tendre|how
until smooth|until creamy|bis es glatt ist|до однородности|jusqu'à obtenir une texture lisse|how
gently|carefully|vorsichtig|осторожно|délicatement|how
with a wooden spoon|using a wooden spoon|mit einem Holzlöffel|деревянной ложкой|avec une cuillère en bois|how
in a hot pan|in a hot skillet|in einer heißen Pfanne|на горячей сковороде|dans une poêle chaude|how
warm|hot|warm|тёплым|chaud|serve
immediately|right away|sofort|сразу|immédiatement|serve
with fresh bread|with crusty bread|mit frischem Brot|со свежим хлебом|avec du pain frais|serve
chilled|cold|gekühlt|охлаждённым|bien frais|serve
with a green salad|with a side salad|mit grünem Salat|с зелёным салатом|avec une salade verte|serve
"""

# Sentence templates: key | en | en as a back-translation may word it | de | ru | fr
_TEMPLATES = """
prep|{V} the {A}.|{V} the {A} well.|{A} {V}.|{V} {A}.|{V} {A}.
combine|{V} the {A} and the {B} {P}.|{V} the {A} with the {B} {P}.|{A} und {B} {P} {V}.|{V} {A} и {B} {P}.|{V} {A} et {B} {P}.
add|Add the {A} and {V} {P}.|Put in the {A} and {V} {P}.|{A} hinzufügen und {P} {V}.|добавить {A} и {V} {P}.|ajouter {A} et {V} {P}.
cook|{V} for {N} minutes {P}.|{V} {P} for {N} minutes.|{N} Minuten {P} {V}.|{V} {N} минут {P}.|{V} pendant {N} minutes {P}.
rest|Let the {D} rest for {N} minutes.|Leave the {D} to rest for {N} minutes.|{D} {N} Minuten ruhen lassen.|дать {D} постоять {N} минут.|laisser reposer {D} pendant {N} minutes.
serve|Serve the {D} {S}.|Serve the {D} {S}, enjoy.|{D} {S} servieren.|подавать {D} {S}.|servir {D} {S}.
"""

# en | syn | de | ru | fr | plate style | plate colour | background | cook verb | core | extras
_DISHES = """
salad|salad bowl|Salat|салат|salade|bowl|#ffffff|#c8b08a|toss|lettuce,tomato,cucumber|red onion,olives,feta,avocado,carrot,bell pepper,corn,walnuts,chickpeas,spinach
soup|broth|Suppe|суп|soupe|bowl|#f4efe6|#6b4f3a|simmer|onion,carrot,celery|potato,tomato,lentils,chicken,peas,garlic,cream,pumpkin,noodles,mushroom
stew|ragout|Eintopf|рагу|ragoût|bowl|#7a4a2b|#3d3d3d|simmer|beef,potato,carrot,onion|celery,garlic,mushroom,tomato sauce,peas,green beans,sweet potato,chickpeas
pasta|noodle dish|Pasta|паста|pâtes|plate|#ffffff|#d9534f|boil|spaghetti,tomato sauce,garlic,parmesan|basil,mushroom,bacon,cream,spinach,shrimp,chicken,zucchini,olives
pie|tart|Pastete|пирог|tarte|plate|#e9e2d0|#b38b6d|bake|flour,butter,egg,sugar|apple,pumpkin,cinnamon,blueberries,raspberries,lemon,walnuts,vanilla
cake|sponge cake|Kuchen|торт|gâteau|plate|#f6d5e0|#f0e6f6|bake|flour,sugar,egg,butter,milk|chocolate,cocoa,vanilla,strawberries,lemon,banana,walnuts,almonds,cream,honey
curry|curry dish|Curry|карри|curry|bowl|#f2c14e|#2f4858|simmer|onion,garlic,ginger,coconut milk,curry paste|chicken,chickpeas,potato,spinach,tofu,shrimp,rice,cilantro,lentils,sweet potato
pizza|flatbread|Pizza|пицца|pizza|board|#c68642|#4a6741|bake|flour,tomato sauce,mozzarella|basil,ham,mushroom,olives,bell pepper,sausage,pineapple,red onion,spinach,bacon
sandwich|sub|Sandwich|сэндвич|sandwich|board|#deb887|#e8e8e8|toast|bread,cheese,lettuce|ham,tomato,chicken,bacon,egg,avocado,cucumber,tuna,onion
risotto|rice dish|Risotto|ризотто|risotto|oval|#ece6da|#556b2f|simmer|rice,onion,parmesan,butter|mushroom,peas,shrimp,spinach,pumpkin,chicken,garlic,lemon
omelette|omelet|Omelett|омлет|omelette|pan|#333333|#d0e1f9|fry|egg,butter,milk|cheese,ham,mushroom,spinach,onion,tomato,bell pepper,bacon,parsley
muffins|cupcakes|Muffins|маффины|muffins|tray|#9e9e9e|#fff1d6|bake|flour,sugar,egg,milk,butter|blueberries,banana,chocolate,apple,cinnamon,oats,raspberries,lemon
casserole|bake|Auflauf|запеканка|gratin|tray|#c0392b|#f5f0e1|bake|potato,cheese,cream|chicken,broccoli,ham,onion,spinach,mushroom,noodles,green beans,corn
stir-fry|wok dish|Pfannengericht|вок|sauté|pan|#1f1f1f|#a93226|fry|soy sauce,garlic,ginger,bell pepper|chicken,beef,tofu,shrimp,broccoli,carrot,noodles,rice,peanuts,mushroom,cabbage
tacos|taco|Tacos|тако|tacos|oval|#f4d03f|#1abc9c|grill|tortilla,beef,lettuce,tomato|cheese,avocado,black beans,red onion,cilantro,lime,chili pepper,chicken,corn
cookies|biscuits|Kekse|печенье|biscuits|tray|#b0b0b0|#5d4037|bake|flour,butter,sugar,egg|chocolate,oats,brown sugar,peanuts,walnuts,cinnamon,vanilla,almonds,honey
pancakes|hotcakes|Pfannkuchen|блины|crêpes|plate|#fdfefe|#85c1e9|fry|flour,milk,egg,sugar|banana,blueberries,honey,strawberries,butter,chocolate,cinnamon,oats,raspberries
smoothie|shake|Smoothie|смузи|smoothie|glass|#d6eaf8|#f9e79f|blend|banana,yogurt,milk|strawberries,blueberries,mango,pineapple,honey,spinach,orange,oats,raspberries,kale,apple
burger|hamburger|Burger|бургер|burger|square|#2c3e50|#f0b27a|grill|beef,bread,lettuce,tomato,cheese|onion,bacon,cucumber,red onion,egg,avocado,mushroom,chili pepper
porridge|oatmeal|Haferbrei|каша|porridge|bowl|#fafafa|#d5f5e3|simmer|oats,milk,honey|banana,blueberries,apple,cinnamon,walnuts,almonds,strawberries,raspberries,peanuts
roast|roast dinner|Braten|жаркое|rôti|oval|#f0ebe0|#7b241c|roast|chicken,potato,garlic,carrot|onion,sweet potato,beetroot,lemon,parsley,pumpkin,green beans,celery
"""

LANGS_OUT = ("en", "de-en", "ru-en", "de", "ru", "fr")  # what render() knows
TRANSLATIONS = ("de", "ru", "fr", "de-en", "ru-en")  # the layer1_<lang>.json files written
_FIELD = {"en": 0, "de-en": 0, "ru-en": 0, "de": 2, "ru": 3, "fr": 4}  # lexicon column per language
BACK_SYNONYM_P = {"de-en": 0.3, "ru-en": 0.45}  # chance a back-translation swaps a word or wording
IMAGE_COUNT_P = (0.4, 0.25, 0.15, 0.1, 0.1)  # P(1..5 images) of a recipe with images
BLOCK = 40  # every block of 40 recipes holds each rare feature (see _rare_features)
BACKGROUND_CLASS_P = 0.1  # recipes put in class 0 (background)
JPEG_QUALITY = 90
SPRITE = 48  # side of an ingredient's canonical sprite, scaled per piece
SHAPES = ("circle", "square", "triangle", "stripe", "star", "ring", "diamond", "cross")
TEXTURES = ("solid", "dots", "stripes", "noise")


def _rows(table: str) -> list[list[str]]:
    return [line.split("|") for line in table.strip().splitlines()]


def _hex(colour: str) -> tuple[int, int, int]:
    return tuple(int(colour[k:k + 2], 16) for k in (1, 3, 5))


def _assign_looks(ingredients: list[dict]) -> None:
    """Give each ingredient a shape and a texture, in table order.

    Each takes the least used (shape, texture) pair; among those, the one whose ingredients'
    colours are farthest from its own, so that look-alikes (same shape and texture) differ in
    colour as much as the table allows. Deterministic (ties go to the first pair).
    """
    looks = [(s, t) for t in TEXTURES for s in SHAPES]
    members: dict[tuple[str, str], list[tuple[int, int, int]]] = {look: [] for look in looks}
    for ing in ingredients:
        def score(look, colour=ing["colour"]):
            near = min((math.dist(colour, c) for c in members[look]), default=math.inf)
            return len(members[look]), -near

        look = min(looks, key=score)
        members[look].append(ing["colour"])
        ing["shape"], ing["texture"] = look


@cache
def lexicon() -> dict:
    """The parsed lexicon (cached): lists of dicts for ingredients, dishes, verbs, ...

    Each word entry holds ``en`` and ``syn`` as ``(singular, plural)`` and ``de``/``ru``/``fr``;
    ingredients also hold ``colour``, ``shape`` and ``texture`` (see :func:`_assign_looks`).
    """
    def word(fields: list[str]) -> dict:
        en, syn = ((f.split(";") + [f])[:2] for f in fields[:2])
        return {"en": tuple(en), "syn": tuple(syn), "de": fields[2], "ru": fields[3], "fr": fields[4]}

    ingredients = [{**word(f), "colour": _hex(f[5]), "kind": f[6]} for f in _rows(_INGREDIENTS)]
    _assign_looks(ingredients)
    index = {e["en"][0]: i for i, e in enumerate(ingredients)}
    dishes = []
    for f in _rows(_DISHES):
        try:
            core = [index[n] for n in f[9].split(",")]
            extras = [index[n] for n in f[10].split(",")]
        except KeyError as err:  # a typo in the table above
            raise ValueError(f"dish {f[0]!r} names unknown ingredient {err}") from None
        dishes.append({**word(f), "style": f[5], "plate": _hex(f[6]), "background": _hex(f[7]),
                       "cook": f[8], "core": core, "extras": extras})
    verbs = [{**word(f), "class": f[5]} for f in _rows(_VERBS)]
    phrases = [{**word(f), "use": f[5]} for f in _rows(_PHRASES)]
    units = {}
    for f in _rows(_UNITS):
        units[f[0]] = {**word(f[1:]), "quantities": f[6].split(",")}
    return {
        "ingredients": ingredients, "dishes": dishes, "verbs": verbs, "units": units,
        "pantry": [{**word(f), "kind": f[5]} for f in _rows(_PANTRY)],
        "adjectives": [word(f) for f in _rows(_ADJECTIVES)],
        "phrases": phrases,
        "templates": {f[0]: {"en": f[1], "alt": f[2], "de": f[3], "ru": f[4], "fr": f[5]}
                      for f in _rows(_TEMPLATES)},
        "verb_index": {v["en"][0]: i for i, v in enumerate(verbs)},
        "groups": {  # indices of the verbs and phrases of each use, for drawing steps
            **{c: [i for i, v in enumerate(verbs) if v["class"] == c] for c in ("prep", "mix", "cook")},
            **{u: [i for i, p in enumerate(phrases) if p["use"] == u] for u in ("how", "serve")}},
    }


# --- recipes -------------------------------------------------------------------------------------

@cache
def _rare_features(seed: int, block: int) -> dict[str, set[int]]:
    """Positions (``i % BLOCK``) of the rare features in one block of ``BLOCK`` recipes.

    Each block holds exactly one recipe without images, one missing from classes1M, two with an
    empty ingredient line and two with an empty instruction line, so even a small set exercises
    the readers' handling of them.
    """
    perm = [int(v) for v in np.random.default_rng([seed, 3, block]).permutation(BLOCK)]
    return {"no_image": {perm[0]}, "no_class": {perm[1]}, "empty_ingredient": set(perm[2:4]),
            "empty_instruction": set(perm[4:6])}


def _pick(rng: np.random.Generator, items):
    """One element of ``items``, uniformly (cheaper than ``rng.choice``, which the loops felt)."""
    return items[int(rng.integers(len(items)))]


def _sample(rng: np.random.Generator, items: list, k: int) -> list:
    """``k`` distinct elements of ``items`` in random order."""
    return [items[int(j)] for j in rng.permutation(len(items))[:k]]


def _make_steps(rng: np.random.Generator, dish_index: int, ingredients: list[int]) -> list[tuple]:
    """3-8 instruction steps ``(template key, slots)``: prepare, combine, add, cook, rest, serve."""
    lex = lexicon()
    prep, mix, how, serve = (lex["groups"][g] for g in ("prep", "mix", "how", "serve"))
    dish = lex["dishes"][dish_index]
    steps: list[tuple] = []
    for _ in range(int(rng.integers(1, 3))):
        steps.append(("prep", {"V": _pick(rng, prep), "A": _pick(rng, ingredients)}))
    for _ in range(int(rng.integers(0, 3))):
        a, b = _sample(rng, ingredients, 2)
        steps.append(("combine", {"V": _pick(rng, mix), "A": a, "B": b, "P": _pick(rng, how)}))
    rest = rng.random() < 0.4
    for _ in range(int(rng.integers(0, min(2, 6 - len(steps) - rest) + 1))):
        steps.append(("add", {"A": _pick(rng, ingredients), "V": _pick(rng, mix), "P": _pick(rng, how)}))
    minutes = (5, 10, 15, 20, 25, 30, 40, 45)
    steps.append(("cook", {"V": lex["verb_index"][dish["cook"]], "N": _pick(rng, minutes),
                           "P": _pick(rng, how)}))
    if rest:
        steps.append(("rest", {"D": dish_index, "N": _pick(rng, (5, 10, 15))}))
    steps.append(("serve", {"D": dish_index, "S": _pick(rng, serve)}))
    return steps


def make_recipe(seed: int, index: int, max_images: int = 5) -> dict:
    """The structure of recipe ``index`` (language-free; :class:`Renderer` writes its texts).

    Returns:
        ``{"index", "dish", "adjective", "featured", "ingredients" (drawn ingredient indices),
        "lines" (("ing" | "pantry", index, unit, quantity) or ("empty",)), "steps"
        ((template, slots) or ("empty",)), "partition", "n_images", "cls" (None: left out of
        classes1M)}``. Ids are given by :func:`generate`.
    """
    lex = lexicon()
    rare = _rare_features(seed, index // BLOCK)
    pos = index % BLOCK
    rng = np.random.default_rng([seed, 1, index])
    d = int(rng.integers(len(lex["dishes"])))
    dish = lex["dishes"][d]
    core = [c for c in dish["core"] if rng.random() < 0.85] or [dish["core"][0]]
    extras = _sample(rng, dish["extras"], int(rng.integers(2, 6)))
    ingredients = core + extras
    featured = _pick(rng, extras) if rng.random() < 0.7 else _pick(rng, ingredients)

    lines: list[tuple] = []
    for j in rng.permutation(len(ingredients)):
        ing = ingredients[int(j)]
        unit = _pick(rng, _UNIT_KINDS[lex["ingredients"][ing]["kind"]])
        lines.append(("ing", ing, unit, _pick(rng, lex["units"][unit]["quantities"])))
    for p in _sample(rng, range(len(lex["pantry"])), int(rng.integers(0, 3))):
        kinds = _UNIT_KINDS[lex["pantry"][p]["kind"]]
        unit = _pick(rng, kinds) if kinds else "taste"
        qty = _pick(rng, lex["units"][unit]["quantities"]) if kinds else ""
        lines.insert(int(rng.integers(len(lines) + 1)), ("pantry", p, unit, qty))
    if pos in rare["empty_ingredient"]:
        lines.insert(int(rng.integers(len(lines) + 1)), ("empty",))
    steps = _make_steps(rng, d, ingredients)
    if pos in rare["empty_instruction"]:
        steps.insert(int(rng.integers(1, len(steps) + 1)), ("empty",))

    u = rng.random()
    partition = "train" if u < 0.7 else "val" if u < 0.85 else "test"
    cls = None if pos in rare["no_class"] else 0 if rng.random() < BACKGROUND_CLASS_P else d + 1
    cumulative = np.cumsum(IMAGE_COUNT_P[:max_images])
    draw = rng.random() * cumulative[-1]
    n_images = 0 if pos in rare["no_image"] else 1 + int(np.searchsorted(cumulative, draw, side="right"))
    return {"index": index, "dish": d, "adjective": int(rng.integers(len(lex["adjectives"]))),
            "featured": featured, "ingredients": ingredients, "lines": lines, "steps": steps,
            "partition": partition, "n_images": n_images, "cls": cls}


# --- texts ---------------------------------------------------------------------------------------

def _cap(text: str) -> str:
    return text[:1].upper() + text[1:]


class Renderer:
    """Writes a recipe structure in one language of ``LANGS_OUT``.

    ``de-en`` / ``ru-en`` imitate back-translations: English where each word (and each sentence's
    wording) is swapped for its synonym with probability ``BACK_SYNONYM_P``, ``ru-en`` sometimes
    drops articles, both sometimes drop "of" in ingredient lines. ``rng`` is used (and needed)
    only by these.

    Raises:
        ValueError: an unknown language, or a back-translation without ``rng``.
    """

    def __init__(self, lang: str, rng: np.random.Generator | None = None):
        if lang not in LANGS_OUT:
            raise ValueError(f"unknown language {lang!r}; expected one of {', '.join(LANGS_OUT)}")
        if lang in BACK_SYNONYM_P and rng is None:
            raise ValueError(f"language {lang!r} draws its wording: pass an rng")
        self.lang, self.rng = lang, rng
        self.p = BACK_SYNONYM_P.get(lang, 0.0)
        self.english = lang in ("en", "de-en", "ru-en")
        self.lex = lexicon()

    def _swap(self) -> bool:
        return self.p > 0 and self.rng.random() < self.p

    def word(self, entry: dict, plural: bool = False) -> str:
        """``entry`` in this language (English: singular or plural, maybe its synonym)."""
        if not self.english:
            return entry[self.lang]
        return entry["syn" if self._swap() else "en"][int(plural)]

    def title(self, r: dict) -> str:
        adj = self.word(self.lex["adjectives"][r["adjective"]])
        ing = self.word(self.lex["ingredients"][r["featured"]])
        dish = self.word(self.lex["dishes"][r["dish"]])
        if self.english:
            return " ".join(_cap(w) for w in f"{adj} {ing} {dish}".split(" "))
        pattern = {"de": "{a} {d} mit {i}", "ru": "{a} {d} с {i}", "fr": "{d} {a} avec {i}"}[self.lang]
        return _cap(pattern.format(a=adj, d=dish, i=ing))

    def line(self, item: tuple) -> str:
        """One ingredient line ("2 cups of flour"), ``""`` for an empty one."""
        if item[0] == "empty":
            return ""
        kind, idx, unit, qty = item
        entry = self.lex["ingredients" if kind == "ing" else "pantry"][idx]
        plural = qty not in ("1", "1/2")
        lang = "en" if self.english else self.lang
        if unit == "taste":
            name = self.word(entry)
            return {"en": f"{name} to taste", "de": f"{name} nach Geschmack", "ru": f"{name} по вкусу",
                    "fr": f"{name} selon le goût"}[lang]
        if unit == "count":
            name = self.word(entry, plural)
            return f"{name} — {qty} шт." if lang == "ru" else f"{qty} {name}"
        unit_word, name = self.word(self.lex["units"][unit], plural), self.word(entry)
        if lang == "en":
            return f"{qty} {unit_word} {name}" if self._swap() else f"{qty} {unit_word} of {name}"
        if lang == "fr":  # "de farine", "d'huile"
            return f"{qty} {unit_word} " + ("d'" if name[0] in "aeiouyéèhœ" else "de ") + name
        return f"{name} — {qty} {unit_word}" if lang == "ru" else f"{qty} {unit_word} {name}"

    def step(self, item: tuple) -> str:
        """One instruction sentence, ``""`` for an empty one."""
        if item[0] == "empty":
            return ""
        key, slots = item
        forms = self.lex["templates"][key]
        template = forms["alt" if self._swap() else "en"] if self.english else forms[self.lang]
        words = {}
        for name, value in slots.items():
            table = {"V": "verbs", "A": "ingredients", "B": "ingredients", "P": "phrases", "S": "phrases",
                     "D": "dishes"}.get(name)
            words[name] = self.word(self.lex[table][value]) if table else str(value)
        text = template.format(**words)
        if self.lang == "ru-en" and self.rng.random() < 0.5:
            text = text.replace(" the ", " ")  # Russian has no articles
        return _cap(" ".join(text.split()))

    def render(self, r: dict) -> tuple[str, list[str], list[str]]:
        """``(title, ingredient lines, instruction sentences)``; empty entries stay ``""``."""
        return self.title(r), [self.line(x) for x in r["lines"]], [self.step(x) for x in r["steps"]]


# --- images --------------------------------------------------------------------------------------

def _shade(colour, factor: float, add: float = 0.0) -> tuple[int, int, int]:
    return tuple(int(min(255, max(0, c * factor + add))) for c in colour)


@cache
def _sprite(index: int) -> Image.Image:
    """Ingredient ``index``'s look: an RGBA ``SPRITE`` x ``SPRITE`` image (shape, texture, outline)."""
    ing = lexicon()["ingredients"][index]
    n, c = SPRITE, SPRITE / 2
    mask = Image.new("L", (n, n), 0)
    draw = ImageDraw.Draw(mask)
    shape = ing["shape"]
    if shape == "circle":
        draw.ellipse([4, 4, n - 5, n - 5], fill=255)
    elif shape == "square":
        draw.rectangle([8, 8, n - 9, n - 9], fill=255)
    elif shape == "triangle":
        draw.polygon([(c, 3), (n - 3, n - 5), (3, n - 5)], fill=255)
    elif shape == "stripe":
        draw.rectangle([2, c - 7, n - 3, c + 6], fill=255)
    elif shape == "star":
        points = [(c + (22 if k % 2 == 0 else 9) * math.cos(math.pi * (k / 5 - 0.5)),
                   c + (22 if k % 2 == 0 else 9) * math.sin(math.pi * (k / 5 - 0.5))) for k in range(10)]
        draw.polygon(points, fill=255)
    elif shape == "ring":
        draw.ellipse([3, 3, n - 4, n - 4], fill=255)
        draw.ellipse([15, 15, n - 16, n - 16], fill=0)
    elif shape == "diamond":
        draw.polygon([(c, 2), (n - 3, c), (c, n - 3), (2, c)], fill=255)
    else:  # cross
        draw.rectangle([c - 6, 4, c + 5, n - 5], fill=255)
        draw.rectangle([4, c - 6, n - 5, c + 5], fill=255)
    colour = np.asarray(ing["colour"], dtype=np.float32)
    # Texture marks contrast with the colour: darker on light colours, lighter on dark ones.
    accent = colour * 0.55 if colour @ np.float32([0.299, 0.587, 0.114]) > 100 else colour * 0.5 + 110
    rgb = np.tile(colour, (n, n, 1))  # (n, n, 3)
    yy, xx = np.mgrid[0:n, 0:n]
    if ing["texture"] == "dots":
        rgb[((xx % 8) - 3.5) ** 2 + ((yy % 8) - 3.5) ** 2 <= 5] = accent
    elif ing["texture"] == "stripes":
        rgb[((xx + yy) // 5) % 2 == 0] = accent
    elif ing["texture"] == "noise":  # fixed per ingredient: part of its look, not of the image
        rgb += np.random.default_rng([7919, index]).normal(0, 30, (n, n, 1)).astype(np.float32)
    alpha = np.asarray(mask)
    edge = (alpha > 0) & (np.asarray(mask.filter(ImageFilter.MinFilter(5))) == 0)
    rgb[edge] = colour * 0.6
    rgba = np.dstack([np.clip(rgb, 0, 255).astype(np.uint8), alpha])  # (n, n, 4)
    return Image.fromarray(rgba, "RGBA")


def _rect(cx: float, cy: float, hx: float, hy: float, angle: float) -> list[tuple[float, float]]:
    """Corners of a rectangle of half-sides ``hx``, ``hy`` rotated by ``angle`` radians."""
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + x * cos - y * sin, cy + x * sin + y * cos)
            for x, y in ((-hx, -hy), (hx, -hy), (hx, hy), (-hx, hy))]


def _draw_plate(draw: ImageDraw.ImageDraw, dish: dict, rng: np.random.Generator,
                size: int) -> tuple[float, float, float, float]:
    """Draw the dish's plate, bowl, board... and return where food goes: ``(cx, cy, rx, ry)``."""
    cx, cy = size * (0.5 + rng.uniform(-0.08, 0.08, 2))
    r = size * rng.uniform(0.36, 0.46)
    col = _shade(np.asarray(dish["plate"]) + rng.integers(-10, 11, 3), 1.0)
    dark, width = _shade(col, 0.75), max(1, size // 96)
    style = dish["style"]
    if style in ("plate", "bowl", "pan"):
        if style == "pan":  # the handle first, so the pan covers its root
            t = rng.uniform(0, 2 * math.pi)
            draw.line([(cx, cy), (cx + 1.6 * r * math.cos(t), cy + 1.6 * r * math.sin(t))],
                      fill=dark, width=max(2, int(0.18 * r)))
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=col)
        inner = 0.8 * r
        if style == "plate":
            draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], outline=dark, width=width)
        else:  # a bowl's or pan's inside is in shadow (bowl) or lighter metal (pan)
            fill = _shade(col, 0.8) if style == "bowl" else _shade(col, 1.0, 30)
            draw.ellipse([cx - inner, cy - inner, cx + inner, cy + inner], fill=fill)
        return cx, cy, 0.68 * r, 0.68 * r
    if style == "oval":
        rx, ry = 1.12 * r, 0.78 * r
        draw.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=col)
        draw.ellipse([cx - 0.82 * rx, cy - 0.8 * ry, cx + 0.82 * rx, cy + 0.8 * ry], outline=dark, width=width)
        return cx, cy, 0.72 * rx, 0.68 * ry
    if style in ("square", "board"):
        angle = rng.uniform(-0.4, 0.4)
        hx, hy = (0.88 * r, 0.88 * r) if style == "square" else (1.05 * r, 0.72 * r)
        draw.polygon(_rect(cx, cy, hx, hy, angle), fill=col)
        if style == "square":
            draw.polygon(_rect(cx, cy, 0.75 * hx, 0.75 * hy, angle), outline=dark, width=width)
        else:  # wood grain along the board
            for k in range(-2, 3):
                (x0, y0), (x1, y1) = _rect(cx, cy, 0.9 * hx, 0.3 * k * hy, angle)[:2]
                draw.line([(x0, y0), (x1, y1)], fill=dark, width=width)
        return cx, cy, 0.75 * hy, 0.75 * hy
    if style == "tray":
        hx, hy = 1.1 * r, 0.85 * r
        draw.rounded_rectangle([cx - hx, cy - hy, cx + hx, cy + hy], radius=0.1 * r, fill=col,
                               outline=dark, width=3 * width)
        return cx, cy, 0.8 * hx, 0.75 * hy
    # glass: tall, with the drink inside
    hx, hy = 0.45 * r, 0.95 * r
    draw.rounded_rectangle([cx - hx, cy - hy, cx + hx, cy + hy], radius=0.15 * r, fill=col,
                           outline=_shade(col, 1.0, 40), width=2 * width)
    draw.rectangle([cx - 0.8 * hx, cy - 0.6 * hy, cx + 0.8 * hx, cy + 0.9 * hy], fill=_shade(col, 0.85))
    return cx, cy + 0.15 * hy, 0.6 * hx, 0.65 * hy


@cache
def _sprite_level(index: int, level: int) -> Image.Image:
    """``_sprite(index)`` halved ``level`` times (box filter), alpha premultiplied ("RGBa", the
    mode PIL resamples in, so each piece skips two conversions): the source of small pieces."""
    sprite = _sprite(index)
    return (sprite if level == 0 else sprite.reduce(2 ** level)).convert("RGBa")


def _piece(index: int, angle: float, side: int) -> Image.Image:
    """Ingredient ``index`` rotated by ``angle`` (radians) in an RGBA ``side`` x ``side`` box.

    One affine transform (rotation and scale, on premultiplied alpha) from the smallest halved
    sprite at least ``side`` wide, so bilinear sampling never skips texture (no aliasing).
    """
    level = 0
    while level < 2 and SPRITE >> (level + 1) >= side:
        level += 1
    sprite = _sprite_level(index, level)
    n = sprite.size[0]
    cos, sin = math.cos(angle), math.sin(angle)
    k = n * (abs(cos) + abs(sin)) / side  # source pixels per output pixel: the box holds the rotated shape
    a, b, d, e = cos * k, sin * k, -sin * k, cos * k
    c = side / 2
    return sprite.transform((side, side), Image.AFFINE, (a, b, n / 2 - (a + b) * c, d, e, n / 2 - (d + e) * c),
                            resample=Image.BILINEAR).convert("RGBA")


@cache
def _noise_tile(size: int) -> np.ndarray:
    """Fixed standard normal noise, float32 (2 size, 2 size, 3); images take a random window."""
    return np.random.default_rng([7, size]).standard_normal((2 * size, 2 * size, 3), dtype=np.float32)


@cache
def _buffers(size: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Work arrays of this process for :func:`draw_image`: float32 (S, S), two (S, S, 3), uint8 (S, S, 3)."""
    return (np.empty((size, size), np.float32), np.empty((size, size, 3), np.float32),
            np.empty((size, size, 3), np.float32), np.empty((size, size, 3), np.uint8))


@cache
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates scaled to [-0.5, 0.5], for lighting gradients: two (size, size) arrays."""
    v = (np.arange(size, dtype=np.float32) + 0.5) / size - 0.5
    return np.meshgrid(v, v)


def draw_image(seed: int, index: int, k: int, recipe: dict, size: int = 256) -> Image.Image:
    """Image ``k`` of recipe ``index``: the dish's plate on its background with the recipe's
    ingredients scattered on it (the featured one more often), under random light and noise.

    Args:
        seed: the data set's seed.
        index: the recipe's index (with ``k``, seeds this image's draws).
        k: which image of the recipe.
        recipe: a :func:`make_recipe` structure (``dish``, ``ingredients``, ``featured`` used).
        size: side in pixels.

    Returns:
        An RGB ``size`` x ``size`` image.
    """
    rng = np.random.default_rng([seed, 2, index, k])
    dish = lexicon()["dishes"][recipe["dish"]]
    background = _shade(np.asarray(dish["background"]) + rng.integers(-14, 15, 3), 1.0)
    img = Image.new("RGB", (size, size), background)
    cx, cy, rx, ry = _draw_plate(ImageDraw.Draw(img), dish, rng, size)
    pieces = []
    for ing in recipe["ingredients"]:
        pieces += [ing] * int(rng.integers(4, 7) if ing == recipe["featured"] else rng.integers(2, 4))
    for j in rng.permutation(len(pieces)):  # random order: random overlaps
        rho, phi = math.sqrt(rng.random()), rng.uniform(0, 2 * math.pi)
        x, y = cx + rx * rho * math.cos(phi), cy + ry * rho * math.sin(phi)
        side = max(4, int(size * rng.uniform(0.09, 0.15)))
        piece = _piece(pieces[int(j)], rng.uniform(0, 2 * math.pi), side)
        img.paste(piece, (int(x) - side // 2, int(y) - side // 2), piece)
    # Lighting: overall brightness, a linear gradient in a random direction, a colour cast; noise
    # from a fixed tile at a random offset (a fresh normal draw per image cost ~2 ms, a third of
    # the whole image).
    u, v = _grid(size)
    light, gain, arr, out = _buffers(size)  # reused: fresh arrays this size cost page faults
    t, slope = rng.uniform(0, 2 * math.pi), rng.uniform(0, 0.35)
    np.multiply(u, np.float32(slope * math.cos(t)), out=light)  # (S, S)
    light += v * np.float32(slope * math.sin(t))
    light += 1
    light *= np.float32(rng.uniform(0.75, 1.2))
    np.multiply(light[..., None], rng.uniform(0.93, 1.07, 3).astype(np.float32), out=gain)  # (S, S, 3)
    ox, oy = (int(o) for o in rng.integers(0, size, 2))
    arr[...] = np.asarray(img)  # (S, S, 3)
    arr *= gain
    np.multiply(_noise_tile(size)[oy:oy + size, ox:ox + size], np.float32(rng.uniform(2, 7)), out=gain)
    arr += gain
    arr += 0.5  # round, not truncate
    np.clip(arr, 0, 255, out=arr)
    np.copyto(out, arr, casting="unsafe")
    return Image.frombytes("RGB", (size, size), out.data)  # a copy: the buffers are free again


def _write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename (no reader sees half a file).

    Unlike ``utils.io.atomic_write`` there is no fsync, no ``mkstemp`` and no folder check up
    front: images are many, small and regenerable, and those system calls would dominate the run
    time. The temporary name holds the process id (one writer per name); the file gets the
    umask's permissions.
    """
    tmp = f"{path.parent}/.{path.name}.{os.getpid()}.tmp"
    try:
        try:
            handle = open(tmp, "wb")
        except FileNotFoundError:  # first image in this folder
            os.makedirs(path.parent, exist_ok=True)
            handle = open(tmp, "wb")
        with handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _draw_jobs(args: tuple) -> int:
    """Worker: draw and write the images of a few recipes; returns how many were written."""
    seed, size, img_root, jobs = args
    written = 0
    for recipe, partition, image_ids in jobs:
        for k, image_id in enumerate(image_ids):
            buffer = io.BytesIO()
            draw_image(seed, recipe["index"], k, recipe, size).save(buffer, "JPEG", quality=JPEG_QUALITY)
            _write_bytes(image_path(img_root, partition, image_id), buffer.getvalue())
            written += 1
    return written


# --- the data set --------------------------------------------------------------------------------

def _chunks(items: list, n: int) -> list[list]:
    return [items[k:k + n] for k in range(0, len(items), n)]


def generate(out_dir: str | os.PathLike, recipes: int = 5000, seed: int = 0, max_images: int = 5,
             image_size: int = 256, workers: int = 0, *, progress: bool = True) -> dict:
    """Write a synthetic Recipe1M (SPEC section 2) into ``out_dir``, images under ``out_dir/images``.

    Args:
        out_dir: the folder (created). Files of an earlier set there are overwritten; its images
            stay unless this set has the same ids.
        recipes: number of recipes in ``layer1.json``.
        seed: the seed (>= 0); the same arguments give byte-identical files.
        max_images: at most this many images per recipe (1-5).
        image_size: side of the JPEG images in pixels (>= 32).
        workers: processes drawing images (0: in this process); the output does not depend on it.
        progress: show a tqdm bar while drawing.

    Returns:
        The summary also written to ``synthetic.json``: counts per partition (recipes, with
        images, images), totals, dish types, ingredients, classes, empty lines, parameters.

    Raises:
        ValueError: a parameter out of range.
    """
    for name, value, low, high in (("recipes", recipes, 1, None), ("seed", seed, 0, None),
                                   ("max_images", max_images, 1, len(IMAGE_COUNT_P)),
                                   ("image_size", image_size, 32, None), ("workers", workers, 0, None)):
        if not isinstance(value, int) or value < low or (high is not None and value > high):
            bound = f"{low}..{high}" if high is not None else f">= {low}"
            raise ValueError(f"{name} must be an integer {bound}, got {value!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lex = lexicon()

    # Structures and ids, in recipe order (ids come from one stream, so they are unique).
    id_rng, seen = np.random.default_rng([seed, 0]), set()

    def new_id() -> str:
        while True:
            value = f"{int(id_rng.integers(0, 1 << 40)):010x}"
            if value not in seen:
                seen.add(value)
                return value

    items = []
    for i in range(recipes):
        r = make_recipe(seed, i, max_images)
        rid = new_id()
        items.append((rid, r, [f"{new_id()}.jpg" for _ in range(r["n_images"])]))

    # Images first: the JSON files then describe a set whose images all exist.
    img_root = out / "images"
    jobs = [(r, r["partition"], images) for _, r, images in items if images]
    tasks = [(seed, image_size, str(img_root), chunk) for chunk in _chunks(jobs, 8)]
    total = sum(len(images) for _, _, images in items)
    with tqdm(total=total, desc="drawing images", unit="img", disable=not progress) as bar:
        if workers == 0:
            for task in tasks:
                bar.update(_draw_jobs(task))
        else:
            # spawn: safe even when the caller has threads (torch); the output is the same.
            with multiprocessing.get_context("spawn").Pool(workers) as pool:
                for written in pool.imap_unordered(_draw_jobs, tasks):
                    bar.update(written)

    layer1 = []
    translated: dict[str, list[dict]] = {lang: [] for lang in TRANSLATIONS}
    det_ingrs, id2class = [], {}
    for rid, r, _ in items:
        url = f"https://recipes.synthetic-recipe1m.invalid/{rid}"
        title, ingrs, insts = Renderer("en").render(r)
        layer1.append({"id": rid, "title": title, "ingredients": [{"text": t} for t in ingrs],
                       "instructions": [{"text": t} for t in insts], "partition": r["partition"], "url": url})
        for lang in TRANSLATIONS:  # only the back-translations draw (their wording)
            rng = (np.random.default_rng([seed, 4, r["index"], LANGS_OUT.index(lang)])
                   if lang in BACK_SYNONYM_P else None)
            title, ingrs, insts = Renderer(lang, rng).render(r)
            translated[lang].append({"id": rid, f"title_{lang}": title,
                                     f"ingredients_{lang}": [{"text": t} for t in ingrs],
                                     f"instructions_{lang}": [{"text": t} for t in insts],
                                     "partition": r["partition"], "url": url})
        names = [("", False) if x[0] == "empty" else
                 (lex["ingredients" if x[0] == "ing" else "pantry"][x[1]]["en"][0], x[0] == "ing")
                 for x in r["lines"]]
        det_ingrs.append({"id": rid, "valid": [ok for _, ok in names],
                          "ingredients": [{"text": name} for name, _ in names]})
        if r["cls"] is not None:
            id2class[rid] = r["cls"]
    with_images = [k for k, (_, _, images) in enumerate(items) if images]
    order = [with_images[int(k)] for k in np.random.default_rng([seed, 5]).permutation(len(with_images))]
    layer2 = [{"id": items[k][0], "images": [
        {"id": image, "url": f"https://images.synthetic-recipe1m.invalid/{image}"} for image in items[k][2]]}
        for k in order]

    atomic_write_json(out / "layer1.json", layer1)
    for lang in TRANSLATIONS:
        atomic_write_json(out / f"layer1_{lang}.json", translated[lang])
    atomic_write_json(out / "layer2.json", layer2)
    atomic_write_json(out / "det_ingrs.json", det_ingrs)
    class2name = {0: "background", **{d + 1: dish["en"][0] for d, dish in enumerate(lex["dishes"])}}
    write_classes(out / "classes1M.pkl", id2class, class2name)
    for partition in PARTITIONS:  # recipes with images, in layer2.json order (SPEC section 3)
        write_keys(out / f"{partition}_keys.pkl",
                   [items[k][0] for k in order if items[k][1]["partition"] == partition])

    parts = {p: {"recipes": 0, "with_images": 0, "images": 0} for p in PARTITIONS}
    for _, r, images in items:
        counts = parts[r["partition"]]
        counts["recipes"] += 1
        counts["with_images"] += bool(images)
        counts["images"] += len(images)
    summary = {
        "format_version": 1, "recipes": recipes, "with_images": len(with_images), "images": total,
        "partitions": parts, "dish_types": len(lex["dishes"]), "ingredients": len(lex["ingredients"]),
        "classes": len(class2name), "in_classes1M": len(id2class),
        "background_class": sum(1 for c in id2class.values() if c == 0),
        "empty_ingredient_lines": sum(x == ("empty",) for _, r, _ in items for x in r["lines"]),
        "empty_instruction_lines": sum(x == ("empty",) for _, r, _ in items for x in r["steps"]),
        "params": {"recipes": recipes, "seed": seed, "max_images": max_images, "image_size": image_size},
        "languages": ["en", *TRANSLATIONS],
    }
    atomic_write_json(out / "synthetic.json", summary, indent=1)
    return summary


def get_parser() -> argparse.ArgumentParser:
    """The command-line options of ``python -m data.synthetic``."""
    parser = argparse.ArgumentParser(
        prog="python -m data.synthetic",
        description="Write a learnable synthetic Recipe1M (all Recipe1M files, five translations, "
                    "JPEG images under OUT/images); use it with --r1m_path OUT --img_path OUT/images.")
    parser.add_argument("--out", required=True, help="folder to write the data set into (created)")
    parser.add_argument("--recipes", type=int, default=5000, help="number of recipes (default 5000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed >= 0; same seed, same files (default 0)")
    parser.add_argument("--max_images", type=int, default=5, help="at most this many images per recipe, 1-5 (default 5)")
    parser.add_argument("--image_size", type=int, default=256, help="side of the JPEG images in pixels (default 256)")
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1),
                        help="processes drawing images, 0 = none; does not change the output "
                             "(default min(4, CPU count))")
    parser.add_argument("--no_progress", action="store_true", help="hide the progress bar")
    return parser


def main(argv: list[str] | None = None) -> dict:
    """Generate the data set and print a one-line summary; bad arguments exit with a message."""
    parser = get_parser()
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        summary = generate(args.out, recipes=args.recipes, seed=args.seed, max_images=args.max_images,
                           image_size=args.image_size, workers=args.workers, progress=not args.no_progress)
    except ValueError as err:
        parser.error(str(err))
    parts = summary["partitions"]
    split = ", ".join(f"{p} {parts[p]['recipes']}/{parts[p]['with_images']}/{parts[p]['images']}"
                      for p in PARTITIONS)
    print(f"synthetic Recipe1M in {args.out}: {summary['recipes']} recipes, {summary['with_images']} with "
          f"images, {summary['images']} images (recipes/with images/images: {split}), "
          f"{time.perf_counter() - start:.1f} s", file=sys.stdout)
    return summary


if __name__ == "__main__":
    main()
