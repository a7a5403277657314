// The Mooncake Store C ABI table backed by the mooncake.store Python wheel.
#pragma once

#include "mooncake_connector/mooncake_api.h"

namespace mooncake_connector::python {

// Lives for the whole process. Requires the Python interpreter.
const mooncake::Api* PythonMooncakeApi();

}  // namespace mooncake_connector::python
