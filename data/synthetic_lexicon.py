"""The built-in multilingual lexicon of the synthetic Recipe1M (``data/synthetic.py``).

Tables of ingredients, pantry items, units, adjectives, verbs, phrases, sentence templates and
dish types, each word in English (with a synonym that back-translations may use), German,
Russian and French; :func:`lexicon` parses them once per process. Each ingredient also gets a
colour (from its table row) and a shape and a texture (:func:`_assign_looks`), the look that
``data/synthetic_images.py`` draws it with.

Nothing here draws random numbers: the tables and their parse are the same in every process,
which the determinism of ``data/synthetic.py`` relies on.
"""

from __future__ import annotations

import math
from functools import cache

# --- tables --------------------------------------------------------------------------------------
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
# The units an ingredient line of each kind may use ("taste": none, "salt to taste").
UNIT_KINDS = {"dry": ("cup", "g", "tbsp"), "liquid": ("cup", "ml", "tbsp"), "count": ("count",),
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

# The looks an ingredient may get (drawn by data/synthetic_images.py).
SHAPES = ("circle", "square", "triangle", "stripe", "star", "ring", "diamond", "cross")
TEXTURES = ("solid", "dots", "stripes", "noise")


# --- parsing -------------------------------------------------------------------------------------

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
