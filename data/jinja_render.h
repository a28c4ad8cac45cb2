// Renders a parsed Jinja template with the given variables, as Jinja2's sandboxed environment in
// transformers does: builtins range, namespace, dict and raise_exception; the filters, tests and
// string/dict methods that chat templates use; anything else is refused with its line and column.
#pragma once

#include <string>

#include "data/jinja_syntax.h"
#include "data/jinja_value.h"

namespace minitron::jinja {

// `variables` is a dict; its entries are the template's globals (they may shadow the builtins).
std::string render(const Template& parsed, const Value& variables);

}  // namespace minitron::jinja
